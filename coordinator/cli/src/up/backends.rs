//! Which backend each role of `orch up`'s fleet would use, whether it is
//! there, and what enables it: the table `orch up` prints before it starts
//! anything, and the workers' flags that follow from it.
//!
//! A role whose backend is missing still gets a worker, started with
//! `--not-configured <reason>`: it answers every job at once with a typed
//! `not_configured` error in words, so a task says once what is missing
//! instead of failing on connection errors. Hosted reasoner and verifier slots
//! (Kimi K2, OpenAI) are started only when their key is set, and the
//! coordinator's chains name only the slots that run.

use std::ffi::OsString;
use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::UpArgs;

/// The model a Kimi K2 slot asks Moonshot for (Moonshot retires model ids, so
/// `ORCH_UP_KIMI_MODEL` overrides it).
const KIMI_MODEL: &str = "kimi-k2.6";
const MOONSHOT_URL: &str = "https://api.moonshot.ai/v1";
const MOONSHOT_KEY: &str = "MOONSHOT_API_KEY";
const OPENAI_KEY: &str = "OPENAI_API_KEY";
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
const MAX_PROBE_BODY: usize = 1 << 20;

/// One row of the table: a worker to start (or a slot left out) and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// `vision`, `web`, `reasoner`, `verifier`.
    pub role: &'static str,
    /// The slot it serves.
    pub slot: &'static str,
    /// What serves it: `ollama minicpm-v`, `searxng`, `local <file>`, ...
    pub backend: String,
    /// `None` when ready; else what is missing, in words.
    pub missing: Option<String>,
    /// The command or flag that enables it (empty when ready).
    pub enable: String,
    /// The worker's binary and flags; `None`: the slot is not started.
    pub worker: Option<(&'static str, Vec<String>)>,
}

impl Row {
    fn status(&self) -> &str {
        match (&self.missing, &self.worker) {
            (None, _) => "ready",
            (Some(_), Some(_)) => "not configured",
            (Some(_), None) => "not started",
        }
    }
}

/// What `orch up` will run.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// Every role/slot considered, in start order.
    pub rows: Vec<Row>,
    /// `--reasoner-chain`: the reasoner slots started, strongest first.
    pub reasoner_chain: String,
    /// `--verifier-chain`.
    pub verifier_chain: String,
}

impl Plan {
    /// The workers to start: binary and flags.
    pub fn workers(&self) -> impl Iterator<Item = (&'static str, &[String])> {
        self.rows
            .iter()
            .filter_map(|r| r.worker.as_ref().map(|(b, a)| (*b, a.as_slice())))
    }

    /// The table, one line per role/slot, aligned.
    pub fn table(&self) -> String {
        let mut o = String::new();
        let width = self
            .rows
            .iter()
            .map(|r| r.backend.len())
            .max()
            .unwrap_or(7)
            .max(7);
        let _ = writeln!(
            o,
            "  {:<9} {:<8} {:<width$}  {:<15} to enable",
            "role", "slot", "backend", "status"
        );
        for r in &self.rows {
            let detail = match &r.missing {
                Some(why) => format!("{why}: {}", r.enable),
                None => String::new(),
            };
            let _ = writeln!(
                o,
                "  {:<9} {:<8} {:<width$}  {:<15} {detail}",
                r.role,
                r.slot,
                r.backend,
                r.status()
            );
        }
        o
    }
}

/// Reads an environment variable (injected so tests need no real environment).
pub type Env<'a> = &'a dyn Fn(&str) -> Option<OsString>;

fn var(env: Env<'_>, key: &str) -> Option<String> {
    env(key)
        .and_then(|v| v.into_string().ok())
        .filter(|v| !v.trim().is_empty())
}

fn args(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| (*s).to_string()).collect()
}

/// Probes every backend `a` asks for and plans the fleet.
pub async fn plan(a: &UpArgs, env: Env<'_>) -> Plan {
    if a.sim {
        return sim_plan();
    }
    let vision = vision_row(a, env).await;
    let web = web_row(a, env).await;
    let mut rows = vec![vision, web];
    let local = local_model(env);
    let kimi_key = var(env, MOONSHOT_KEY).is_some();
    let openai_key = var(env, OPENAI_KEY).is_some();
    let kimi_model = var(env, "ORCH_UP_KIMI_MODEL").unwrap_or_else(|| KIMI_MODEL.into());
    rows.push(hosted_row(
        "reasoner",
        "kimi_k2",
        format!("moonshot {kimi_model}"),
        kimi_key,
        MOONSHOT_KEY,
        args(&[
            "--provider",
            "openai",
            "--slot",
            "kimi_k2",
            "--base-url",
            MOONSHOT_URL,
            "--model",
            &kimi_model,
        ]),
    ));
    rows.push(hosted_row(
        "reasoner",
        "chatgpt",
        format!("openai {}", orch_providers::openai::DEFAULT_MODEL),
        openai_key,
        OPENAI_KEY,
        args(&["--provider", "openai", "--slot", "chatgpt"]),
    ));
    rows.push(local_row("reasoner", &local));
    rows.push(hosted_row(
        "verifier",
        "chatgpt",
        format!("openai {}", orch_providers::openai::DEFAULT_MODEL),
        openai_key,
        OPENAI_KEY,
        args(&["--provider", "openai", "--slot", "chatgpt"]),
    ));
    rows.push(local_row("verifier", &local));
    let chain = |role: &str| {
        rows.iter()
            .filter(|r| r.role == role && r.worker.is_some())
            .map(|r| r.slot)
            .collect::<Vec<_>>()
            .join(",")
    };
    Plan {
        reasoner_chain: chain("reasoner"),
        verifier_chain: chain("verifier"),
        rows,
    }
}

fn sim_plan() -> Plan {
    let row = |role: &'static str, slot: &'static str, bin: &'static str| Row {
        role,
        slot,
        backend: "simulator".into(),
        missing: None,
        enable: String::new(),
        worker: Some((bin, args(&["--provider", "sim", "--slot", slot]))),
    };
    Plan {
        rows: vec![
            row("vision", "default", "orch-vision"),
            row("web", "default", "orch-web"),
            row("reasoner", "kimi_k2", "orch-reasoner"),
            row("verifier", "chatgpt", "orch-verifier"),
        ],
        reasoner_chain: "kimi_k2".into(),
        verifier_chain: "chatgpt".into(),
    }
}

/// A role that keeps a worker either way: ready, or `--not-configured` with the reason.
fn always_started(
    role: &'static str,
    bin: &'static str,
    backend: String,
    mut flags: Vec<String>,
    missing: Option<(String, String)>,
) -> Row {
    let (missing, enable) = match missing {
        Some((why, enable)) => {
            flags.push("--not-configured".into());
            flags.push(format!("{role}: {why}; {enable}"));
            (Some(why), enable)
        }
        None => (None, String::new()),
    };
    Row {
        role,
        slot: "default",
        backend,
        missing,
        enable,
        worker: Some((bin, flags)),
    }
}

async fn vision_row(a: &UpArgs, env: Env<'_>) -> Row {
    let flags = args(&["--provider", &a.vision_provider]);
    if a.vision_provider == "openai" {
        let model = var(env, "ORCH_OPENAI_MODEL")
            .unwrap_or_else(|| orch_providers::openai::DEFAULT_MODEL.into());
        let key = var(env, "ORCH_OPENAI_API_KEY_ENV").unwrap_or_else(|| OPENAI_KEY.into());
        let missing = var(env, &key)
            .is_none()
            .then(|| (format!("{key} is not set"), format!("export {key}=...")));
        return always_started(
            "vision",
            "orch-vision",
            format!("openai {model}"),
            flags,
            missing,
        );
    }
    let url = var(env, "ORCH_OLLAMA_URL")
        .unwrap_or_else(|| orch_providers::ollama::DEFAULT_BASE_URL.into());
    let model = var(env, "ORCH_OLLAMA_MODEL")
        .unwrap_or_else(|| orch_providers::ollama::DEFAULT_VISION_MODEL.into());
    let other = "or --vision-provider openai with OPENAI_API_KEY";
    let missing = match http_get(&url, "/api/tags").await {
        Err(e) => Some((
            format!("no Ollama at {url} ({e})"),
            format!(
                "install and start Ollama, then `ollama pull {model}` (ORCH_OLLAMA_URL for another address), {other}"
            ),
        )),
        Ok(body) if !ollama_has(&body, &model) => Some((
            format!("Ollama at {url} has no model {model}"),
            format!("ollama pull {model} (ORCH_OLLAMA_MODEL picks another), {other}"),
        )),
        Ok(_) => None,
    };
    always_started(
        "vision",
        "orch-vision",
        format!("ollama {model}"),
        flags,
        missing,
    )
}

/// Whether Ollama's `/api/tags` lists `model` (`minicpm-v` matches `minicpm-v:latest`).
fn ollama_has(body: &str, model: &str) -> bool {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(body) else {
        return false;
    };
    let wanted = if model.contains(':') {
        model.to_string()
    } else {
        format!("{model}:latest")
    };
    v["models"].as_array().is_some_and(|models| {
        models.iter().any(|m| {
            let name = m["name"]
                .as_str()
                .or_else(|| m["model"].as_str())
                .unwrap_or("");
            name == model || name == wanted
        })
    })
}

async fn web_row(a: &UpArgs, env: Env<'_>) -> Row {
    let mut flags = args(&["--provider", &a.search]);
    if a.browser {
        flags.push("--browser".into());
    }
    let others = "or --search brave with BRAVE_API_KEY, or --search tavily with TAVILY_API_KEY";
    let missing = match a.search.as_str() {
        "brave" | "tavily" => {
            let key = var(env, "ORCH_SEARCH_API_KEY_ENV").unwrap_or_else(|| {
                if a.search == "brave" {
                    orch_web::config::DEFAULT_BRAVE_KEY_ENV.into()
                } else {
                    orch_web::config::DEFAULT_TAVILY_KEY_ENV.into()
                }
            });
            var(env, &key)
                .is_none()
                .then(|| (format!("{key} is not set"), format!("export {key}=...")))
        }
        _ => {
            let url = var(env, "ORCH_SEARCH_URL")
                .unwrap_or_else(|| orch_web::search::Backend::Searxng.default_base_url().into());
            match http_get(&url, "/search?q=orch&format=json").await {
                Err(e) => Some((
                    format!("no SearxNG at {url} ({e})"),
                    format!(
                        "run SearxNG with JSON output enabled there (ORCH_SEARCH_URL for another address), {others}"
                    ),
                )),
                Ok(body) if serde_json::from_str::<serde_json::Value>(&body).is_err() => Some((
                    format!("SearxNG at {url} does not answer JSON"),
                    format!("enable `json` in its search.formats, {others}"),
                )),
                Ok(_) => None,
            }
        }
    };
    always_started("web", "orch-web", a.search.clone(), flags, missing)
}

fn hosted_row(
    role: &'static str,
    slot: &'static str,
    backend: String,
    key_set: bool,
    key: &str,
    flags: Vec<String>,
) -> Row {
    let bin = if role == "reasoner" {
        "orch-reasoner"
    } else {
        "orch-verifier"
    };
    Row {
        role,
        slot,
        backend,
        missing: (!key_set).then(|| format!("{key} is not set")),
        enable: if key_set {
            String::new()
        } else {
            format!("export {key}=... and run orch up again")
        },
        worker: key_set.then_some((bin, flags)),
    }
}

/// The local model file, and whether it is there.
fn local_model(env: Env<'_>) -> Result<String, String> {
    match orch_shared::models::local_model_path(env) {
        Some(p) if Path::new(&p).is_file() => Ok(p.display().to_string()),
        Some(p) => Err(format!("no model file at {}", p.display())),
        None => Err("neither ORCH_LOCAL_MODEL nor HOME is set".into()),
    }
}

fn local_row(role: &'static str, model: &Result<String, String>) -> Row {
    let bin = if role == "reasoner" {
        "orch-reasoner"
    } else {
        "orch-verifier"
    };
    let name = |p: &str| {
        Path::new(p)
            .file_name()
            .map_or_else(|| p.to_string(), |f| f.to_string_lossy().into_owned())
    };
    let flags = args(&["--provider", "local", "--slot", "local"]);
    match model {
        Ok(path) => Row {
            role,
            slot: "local",
            backend: format!("local {}", name(path)),
            missing: None,
            enable: String::new(),
            worker: Some((bin, flags)),
        },
        Err(why) => {
            let enable = "deploy/fetch-model.sh (or ORCH_LOCAL_MODEL=<file.gguf>)".to_string();
            let mut flags = flags;
            flags.push("--not-configured".into());
            flags.push(format!("{role}/local: {why}; {enable}"));
            Row {
                role,
                slot: "local",
                backend: "local".into(),
                missing: Some(why.clone()),
                enable,
                worker: Some((bin, flags)),
            }
        }
    }
}

/// A plain HTTP/1.1 GET of `path` below `base` (`http://host:port/...`),
/// bounded in time and size: the body on a 2xx, else why not. `https` bases
/// are only checked for a TCP connection (a hosted service we can reach).
async fn http_get(base: &str, path: &str) -> Result<String, String> {
    let (scheme, rest) = base.split_once("://").ok_or("not a URL")?;
    let (authority, prefix) = rest.split_once('/').map_or((rest, ""), |(a, p)| (a, p));
    let default_port = if scheme == "https" { 443 } else { 80 };
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || authority.starts_with('[') => {
            (h.to_string(), p.parse::<u16>().map_err(|_| "bad port")?)
        }
        _ => (authority.to_string(), default_port),
    };
    let connect = tokio::net::TcpStream::connect((host.trim_matches(['[', ']']), port));
    let mut stream = match tokio::time::timeout(PROBE_TIMEOUT, connect).await {
        Err(_) => return Err("no answer in 2 s".into()),
        Ok(Err(e)) => return Err(connect_error(&e)),
        Ok(Ok(s)) => s,
    };
    if scheme == "https" {
        return Ok(String::new());
    }
    let prefix = prefix.trim_end_matches('/');
    let target = if prefix.is_empty() {
        path.to_string()
    } else {
        format!("/{prefix}{path}")
    };
    let request = format!(
        "GET {target} HTTP/1.1\r\nHost: {authority}\r\nAccept: application/json\r\nConnection: close\r\n\r\n"
    );
    let exchange = async {
        stream.write_all(request.as_bytes()).await?;
        let mut buf = Vec::new();
        (&mut stream)
            .take(MAX_PROBE_BODY as u64)
            .read_to_end(&mut buf)
            .await?;
        Ok::<_, std::io::Error>(buf)
    };
    let buf = match tokio::time::timeout(PROBE_TIMEOUT, exchange).await {
        Err(_) => return Err("no answer in 2 s".into()),
        Ok(Err(e)) => return Err(e.to_string()),
        Ok(Ok(b)) => b,
    };
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text.split_once("\r\n\r\n").ok_or("not an HTTP answer")?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or("not an HTTP answer")?;
    if !(200..300).contains(&status) {
        return Err(format!("HTTP {status}"));
    }
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        return Ok(dechunk(body));
    }
    Ok(body.to_string())
}

fn connect_error(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::ConnectionRefused => "connection refused".into(),
        _ => e.to_string(),
    }
}

/// Joins the chunks of a chunked body (good enough for a probe: sizes, then data).
fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim().split(';').next().unwrap_or(""), 16) else {
            break;
        };
        if n == 0 || tail.len() < n {
            out.push_str(&tail[..n.min(tail.len())]);
            break;
        }
        out.push_str(&tail[..n]);
        rest = tail[n..].trim_start_matches("\r\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        up: UpArgs,
    }

    fn up(args: &[&str]) -> UpArgs {
        Cli::try_parse_from(std::iter::once("up").chain(args.iter().copied()))
            .unwrap_or_else(|e| panic!("{e}"))
            .up
    }

    /// A local HTTP server that answers every request with `reply` (status line included).
    async fn serve(reply: &'static str) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(reply.as_bytes()).await;
            }
        });
        url
    }

    async fn closed_port() -> String {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        drop(l);
        url
    }

    fn env_of(vars: HashMap<&'static str, String>) -> impl Fn(&str) -> Option<OsString> {
        move |k: &str| vars.get(k).map(OsString::from)
    }

    fn row<'p>(p: &'p Plan, role: &str, slot: &str) -> &'p Row {
        p.rows
            .iter()
            .find(|r| r.role == role && r.slot == slot)
            .unwrap_or_else(|| panic!("no row {role}/{slot} in {p:?}"))
    }

    #[tokio::test]
    async fn missing_backends_are_named_with_their_fix_and_answer_not_configured() {
        let dir = tempfile::tempdir().unwrap();
        let vars = HashMap::from([
            ("ORCH_OLLAMA_URL", closed_port().await),
            ("ORCH_SEARCH_URL", closed_port().await),
            ("ORCH_MODEL_DIR", dir.path().display().to_string()),
            ("HOME", dir.path().display().to_string()),
        ]);
        let p = plan(&up(&[]), &env_of(vars)).await;
        let vision = row(&p, "vision", "default");
        assert!(
            vision
                .missing
                .as_deref()
                .unwrap()
                .contains("connection refused"),
            "{vision:?}"
        );
        assert!(
            vision.enable.contains("ollama pull minicpm-v"),
            "{vision:?}"
        );
        let (bin, flags) = vision.worker.as_ref().unwrap();
        assert_eq!(*bin, "orch-vision");
        assert_eq!(flags[..3], ["--provider", "ollama", "--not-configured"]);
        assert!(flags[3].starts_with("vision: no Ollama at"), "{flags:?}");
        let web = row(&p, "web", "default");
        assert!(
            web.missing.as_deref().unwrap().starts_with("no SearxNG at"),
            "{web:?}"
        );
        assert!(web.enable.contains("--search brave"), "{web:?}");
        let local = row(&p, "reasoner", "local");
        assert!(
            local
                .missing
                .as_deref()
                .unwrap()
                .starts_with("no model file at"),
            "{local:?}"
        );
        assert!(local.enable.contains("deploy/fetch-model.sh"));
        // No keys: the hosted slots are not started and the chains name only what runs.
        assert!(row(&p, "reasoner", "kimi_k2").worker.is_none());
        assert_eq!(
            row(&p, "reasoner", "kimi_k2").missing.as_deref(),
            Some("MOONSHOT_API_KEY is not set")
        );
        assert!(row(&p, "verifier", "chatgpt").worker.is_none());
        assert_eq!(
            (p.reasoner_chain.as_str(), p.verifier_chain.as_str()),
            ("local", "local")
        );
        let table = p.table();
        assert!(
            table.contains("not configured") && table.contains("not started"),
            "{table}"
        );
    }

    #[tokio::test]
    async fn present_backends_are_ready_and_keys_start_the_hosted_slots() {
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join(orch_shared::models::DEFAULT_MODEL_FILE);
        std::fs::write(&model, b"GGUF").unwrap();
        let ollama = serve(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n\
             1e\r\n{\"models\":[{\"name\":\"minicpm-v:\r\na\r\nlatest\"}]}\r\n0\r\n\r\n",
        )
        .await;
        let searx = serve("HTTP/1.1 200 OK\r\nContent-Length: 14\r\n\r\n{\"results\":[]}").await;
        let vars = HashMap::from([
            ("ORCH_OLLAMA_URL", ollama),
            ("ORCH_SEARCH_URL", searx),
            ("ORCH_MODEL_DIR", dir.path().display().to_string()),
            ("MOONSHOT_API_KEY", "k".into()),
            ("OPENAI_API_KEY", "k".into()),
        ]);
        let p = plan(&up(&[]), &env_of(vars)).await;
        for r in &p.rows {
            assert_eq!(r.missing, None, "{r:?}");
            let flags = &r.worker.as_ref().unwrap().1;
            assert!(!flags.iter().any(|f| f == "--not-configured"), "{r:?}");
        }
        assert_eq!(p.reasoner_chain, "kimi_k2,chatgpt,local");
        assert_eq!(p.verifier_chain, "chatgpt,local");
        let kimi = row(&p, "reasoner", "kimi_k2")
            .worker
            .as_ref()
            .unwrap()
            .1
            .join(" ");
        assert!(
            kimi.contains("--base-url https://api.moonshot.ai/v1 --model kimi-k2.6"),
            "{kimi}"
        );
    }

    #[tokio::test]
    async fn an_ollama_without_the_model_or_a_searxng_without_json_says_what_to_do() {
        let ollama = serve(
            "HTTP/1.1 200 OK\r\nContent-Length: 29\r\n\r\n{\"models\":[{\"name\":\"llava\"}]}",
        )
        .await;
        let searx = serve("HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n").await;
        let vars = HashMap::from([
            ("ORCH_OLLAMA_URL", ollama),
            ("ORCH_SEARCH_URL", searx),
            ("HOME", "/nonexistent".into()),
        ]);
        let p = plan(&up(&[]), &env_of(vars)).await;
        let vision = row(&p, "vision", "default");
        assert!(
            vision
                .missing
                .as_deref()
                .unwrap()
                .contains("has no model minicpm-v"),
            "{vision:?}"
        );
        assert!(
            vision.enable.starts_with("ollama pull minicpm-v"),
            "{vision:?}"
        );
        let web = row(&p, "web", "default");
        assert!(
            web.missing.as_deref().unwrap().contains("HTTP 403"),
            "{web:?}"
        );
    }

    #[test]
    fn ollama_model_names_match_with_or_without_a_tag() {
        let body = r#"{"models":[{"name":"minicpm-v:latest"},{"name":"llava:13b"}]}"#;
        assert!(ollama_has(body, "minicpm-v"));
        assert!(ollama_has(body, "llava:13b"));
        assert!(!ollama_has(body, "llava"));
        assert!(!ollama_has("not json", "llava"));
    }

    #[tokio::test]
    async fn the_simulator_fleet_needs_nothing() {
        let p = plan(&up(&["--sim", "--search", "tavily"]), &|_: &str| None).await;
        assert!(p.rows.iter().all(|r| r.missing.is_none()));
        assert!(
            p.workers().all(|(_, a)| a[..2] == ["--provider", "sim"]),
            "{p:?}"
        );
    }
}
