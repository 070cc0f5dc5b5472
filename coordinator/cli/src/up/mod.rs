//! `orch up`: a whole local fleet with one command — a nats-server with
//! JetStream (only when none is reachable), the coordinator and the workers —
//! with a backend check first, one line per milestone, logs in files, and an
//! ordered, bounded stop.
//!
//! The default fleet is the real one and needs no API keys: the reasoner and
//! the verifier run the local GGUF model, vision asks Ollama, web asks the
//! configured search backend, and hosted models join when their key is set.
//! What is missing is said once, with its fix ([`backends`]); `--sim` runs the
//! simulator instead. The processes die with `orch up` however it ends
//! ([`members`]).

mod backends;
mod members;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use orch_client::discover;
use orch_shared::config::{NatsArgs, parse_duration};
use orch_shared::shutdown;

use members::Members;

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
    #[arg(long, default_value = "120s", value_parser = parse_duration)]
    pub ready_timeout: Duration,
    /// Print the first task's raw result JSON instead of the summary.
    #[arg(long, requires = "submit")]
    pub json: bool,
    /// Stream every process's log lines here too (they always go to files under
    /// the state dir's `logs/`).
    #[arg(long, short)]
    pub verbose: bool,
    /// On Ctrl-C/SIGTERM, how long each stage of the stop (coordinator, workers,
    /// nats-server) may drain before it is killed. A second signal kills at once.
    #[arg(long, env = "ORCH_DRAIN_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub drain_timeout: Duration,
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

/// `$NATS_SERVER_BIN`, else `nats-server` from PATH, else where `deploy/setup.sh` installs it.
fn nats_server_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("NATS_SERVER_BIN").filter(|b| !b.is_empty()) {
        return PathBuf::from(bin);
    }
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

fn say(what: impl std::fmt::Display) {
    eprintln!("orch up: {what}");
}

/// Starts a nats-server with JetStream on `url`'s local port, unless one answers there.
async fn ensure_nats(
    url: &str,
    state: &std::path::Path,
    members: &mut Members,
) -> anyhow::Result<()> {
    if reachable(url).await {
        say(format_args!(
            "using the NATS server at {url} (not started by orch up, so never stopped by it)"
        ));
        return Ok(());
    }
    let started = Instant::now();
    let port = local_port(url).with_context(|| {
        format!("no NATS server at {url}, and it is not a local address orch up could start one on")
    })?;
    let store = state.join("nats");
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
    members.spawn("nats-server", &nats_server_bin(), &args, url).context(
        "no NATS server is running and nats-server is not installed (deploy/setup.sh installs it)",
    )?;
    while !reachable(url).await {
        if !members.newly_exited().is_empty() {
            bail!(
                "nats-server exited at start:\n{}",
                members.tail("nats-server", 10)
            );
        }
        if started.elapsed() > Duration::from_secs(15) {
            bail!("nats-server did not start listening on {url} in 15 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    say(format_args!(
        "nats-server started on {url} in {:.1} s (JetStream store {})",
        started.elapsed().as_secs_f64(),
        store.display()
    ));
    Ok(())
}

/// A process `orch up` waits for: its service name in NATS discovery, its slot
/// (`None` for the coordinator) and what to say when it shows up.
struct Expected {
    service: String,
    slot: Option<String>,
    label: String,
    note: String,
}

fn expected(plan: &backends::Plan) -> Vec<Expected> {
    let mut out: Vec<Expected> = plan
        .rows
        .iter()
        .filter_map(|r| {
            let (bin, _) = r.worker.as_ref()?;
            Some(Expected {
                service: (*bin).to_string(),
                slot: Some(r.slot.to_string()),
                label: format!("{}/{}", r.role, r.slot),
                note: match &r.missing {
                    None => r.backend.clone(),
                    Some(_) => "answers not_configured".into(),
                },
            })
        })
        .collect();
    out.push(Expected {
        service: "orch-coordinator".into(),
        slot: None,
        label: "coordinator".into(),
        note: format!(
            "chains: reasoner {}, verifier {}",
            plan.reasoner_chain, plan.verifier_chain
        ),
    });
    out
}

/// Waits until every expected process is in NATS discovery, one line each as
/// it shows up. `false` if one exits first, the time runs out or a signal comes.
async fn wait_ready(
    client: &async_nats::Client,
    mut waiting: Vec<Expected>,
    members: &mut Members,
    a: &UpArgs,
    stop: &tokio_util::sync::CancellationToken,
) -> bool {
    let start = Instant::now();
    loop {
        let found = discover(client, Duration::from_millis(300))
            .await
            .unwrap_or_default();
        waiting.retain(|e| {
            let up = found.iter().any(|s| {
                s.name == e.service && e.slot.as_deref().is_none_or(|slot| s.meta("slot") == slot)
            });
            if up {
                say(format_args!(
                    "  {:<17} ready in {:>4.1} s  ({})",
                    e.label,
                    start.elapsed().as_secs_f64(),
                    e.note
                ));
            }
            !up
        });
        if waiting.is_empty() {
            return true;
        }
        let exited = members.newly_exited();
        if let Some(first) = exited.first() {
            let name = first.split(' ').next().unwrap_or(first);
            say(format_args!(
                "{} exited before it was ready; the end of its log ({}):\n{}",
                exited.join(", "),
                members.log_dir().join(format!("{name}.log")).display(),
                members.tail(name, 15)
            ));
            return false;
        }
        if start.elapsed() > a.ready_timeout || stop.is_cancelled() {
            let names: Vec<&str> = waiting.iter().map(|e| e.label.as_str()).collect();
            say(format_args!(
                "not ready after {:.0} s; still waiting for {} (logs in {})",
                start.elapsed().as_secs_f64(),
                names.join(", "),
                members.log_dir().display()
            ));
            return false;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Runs the fleet until Ctrl-C/SIGTERM, then stops it in order.
pub async fn run(nats: &NatsArgs, a: UpArgs) -> anyhow::Result<ExitCode> {
    let stages = shutdown::stages();
    let url = nats.url.clone();
    let state = state_dir(&a);
    let mut members = Members::open(&state, a.verbose)?;
    if !a.verbose {
        say(format_args!(
            "logs go to {} (--verbose shows them here)",
            members.log_dir().display()
        ));
    }
    let ready = match start(nats, &a, &url, &mut members, &stages.drain).await {
        Ok(ready) => ready,
        Err(e) => {
            say(format_args!("{e:#}"));
            false
        }
    };
    if ready {
        if let Some(task) = a.submit.clone() {
            let mut args = crate::cmd::SubmitArgs::for_task(task, a.verify);
            args.json = a.json;
            let nats = NatsArgs {
                url: url.clone(),
                ..nats.clone()
            };
            tokio::select! {
                r = crate::cmd::submit(&nats, args) => {
                    if let Err(e) = r {
                        say(format_args!("the first task failed: {e:#}"));
                    }
                }
                () = stages.drain.cancelled() => {}
            }
        }
        if !stages.drain.is_cancelled() {
            say(format_args!(
                "the fleet is running on {url}. Submit from another terminal, e.g.\n    orch submit \"Find Python developers on LinkedIn\" --available-tools playwright_navigate\n  Ctrl-C stops it (a second Ctrl-C kills it)."
            ));
        }
        // Serve until a signal; report a process that dies meanwhile.
        loop {
            tokio::select! {
                () = stages.drain.cancelled() => break,
                () = tokio::time::sleep(Duration::from_secs(1)) => {
                    for gone in members.newly_exited() {
                        say(format_args!("{gone} exited; its log is in {}", members.log_dir().display()));
                    }
                }
            }
        }
    }
    say(format_args!(
        "stopping: coordinator, then workers, then nats-server (each may drain {:.0} s)",
        a.drain_timeout.as_secs_f64()
    ));
    let clean = members.stop(a.drain_timeout, &stages.force).await;
    Ok(if ready && clean && !stages.force.is_cancelled() {
        ExitCode::SUCCESS
    } else if stages.force.is_cancelled() {
        ExitCode::from(shutdown::EXIT_FORCED as u8)
    } else {
        ExitCode::FAILURE
    })
}

/// Starts everything and waits until it is ready: `Ok(false)` when it never was.
async fn start(
    nats: &NatsArgs,
    a: &UpArgs,
    url: &str,
    members: &mut Members,
    stop: &tokio_util::sync::CancellationToken,
) -> anyhow::Result<bool> {
    let state = state_dir(a);
    ensure_nats(url, &state, members).await?;
    let plan = backends::plan(a, &|k| std::env::var_os(k)).await;
    say(format_args!("backends:\n{}", plan.table().trim_end()));
    for (bin, args) in plan.workers() {
        members.spawn(bin.trim_start_matches("orch-"), &sibling(bin)?, args, url)?;
    }
    let mut coordinator = vec![
        "--reasoner-chain".to_string(),
        plan.reasoner_chain.clone(),
        "--verifier-chain".into(),
        plan.verifier_chain.clone(),
    ];
    if a.verify {
        coordinator.push("--verify".into());
    }
    members.spawn(
        "coordinator",
        &sibling("orch-coordinator")?,
        &coordinator,
        url,
    )?;
    let (client, _) = nats.connect("orch-up").await?;
    say("waiting for every process to register in NATS discovery");
    let started = Instant::now();
    let ready = wait_ready(&client, expected(&plan), members, a, stop).await;
    if ready {
        say(format_args!(
            "fleet ready in {:.1} s",
            started.elapsed().as_secs_f64()
        ));
    }
    Ok(ready)
}
