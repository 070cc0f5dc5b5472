//! The request/reply subcommands: submit, stats, workers, events, schemas.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use futures::StreamExt as _;
use orch_client::{Orchestrator, ReplayFrom, SubmitRequest, TaskId, Timeouts};
use orch_shared::config::{NatsArgs, parse_duration};
use orch_shared::wire::EventKind;

use crate::render;

/// `--json` only.
#[derive(clap::Args, Debug)]
pub struct JsonFlag {
    /// Print raw JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `orch submit`.
#[derive(clap::Args, Debug)]
pub struct SubmitArgs {
    /// What to do, in natural language.
    pub task: String,
    /// Roles to use, comma-separated: vision, web, reasoner, verifier (or kimi_k2, chatgpt, web_search).
    #[arg(long, value_delimiter = ',')]
    pub tools: Option<Vec<String>>,
    /// Tool names the plan may use, comma-separated.
    #[arg(long = "available-tools", value_delimiter = ',')]
    pub available_tools: Vec<String>,
    /// Extra context for every model.
    #[arg(long)]
    pub context: Option<String>,
    /// A PNG or JPEG screenshot for the vision role.
    #[arg(long)]
    pub screenshot: Option<PathBuf>,
    /// Web search query (defaults to the task).
    #[arg(long)]
    pub query: Option<String>,
    /// Run verification.
    #[arg(long, conflicts_with = "no_verify")]
    pub verify: bool,
    /// Skip verification even if the coordinator verifies by default.
    #[arg(long)]
    pub no_verify: bool,
    /// Task id (default: generated).
    #[arg(long)]
    pub task_id: Option<String>,
    /// Phase 1 time limit.
    #[arg(long, value_parser = parse_duration)]
    pub parallel_timeout: Option<Duration>,
    /// Phase 2 time limit.
    #[arg(long, value_parser = parse_duration)]
    pub reasoning_timeout: Option<Duration>,
    /// Phase 3 time limit.
    #[arg(long, value_parser = parse_duration)]
    pub verification_timeout: Option<Duration>,
    /// Bypass the coordinator's result cache for this task.
    #[arg(long)]
    pub no_cache: bool,
    /// Send MessagePack instead of JSON (screenshots travel as raw bytes).
    #[arg(long)]
    pub msgpack: bool,
    /// Print the raw result JSON (no progress lines).
    #[arg(long)]
    pub json: bool,
    /// Submit durably through JetStream (survives coordinator crashes and server
    /// restarts; answered exactly once), then wait for the stored result.
    #[arg(long)]
    pub durable: bool,
    /// With --durable: print the task id and exit without waiting.
    #[arg(long, requires = "durable")]
    pub no_wait: bool,
}

/// `orch result`.
#[derive(clap::Args, Debug)]
pub struct ResultArgs {
    /// The task id.
    pub task_id: String,
    /// Wait up to this long for a pending task.
    #[arg(long, value_parser = parse_duration)]
    pub wait: Option<Duration>,
    /// Print raw JSON.
    #[arg(long)]
    pub json: bool,
}

impl SubmitArgs {
    /// Defaults for submitting `task` (used by `orch up --submit`).
    pub fn for_task(task: String, verify: bool) -> SubmitArgs {
        SubmitArgs {
            task,
            tools: None,
            available_tools: vec![
                "playwright_navigate".into(),
                "playwright_extract_entities".into(),
            ],
            context: None,
            screenshot: None,
            query: None,
            verify,
            no_verify: false,
            task_id: None,
            parallel_timeout: None,
            reasoning_timeout: None,
            verification_timeout: None,
            no_cache: false,
            msgpack: false,
            json: false,
            durable: false,
            no_wait: false,
        }
    }
}

/// `orch workers`.
#[derive(clap::Args, Debug)]
pub struct WorkersArgs {
    /// How long to collect discovery replies.
    #[arg(long, default_value = "500ms", value_parser = parse_duration)]
    pub wait: Duration,
    /// Print raw JSON.
    #[arg(long)]
    pub json: bool,
}

/// `orch events`.
#[derive(clap::Args, Debug)]
pub struct EventsArgs {
    /// Only this task's events.
    #[arg(long)]
    pub task: Option<String>,
    /// Only events of this kind (action_start, fallback, conflict, ...).
    #[arg(long)]
    pub kind: Option<String>,
    /// Keep following (default: stop after the task's final event when --task is given).
    #[arg(long)]
    pub follow: bool,
    /// Replay from this time: RFC 3339 (`2026-11-25T10:00:00Z`) or an age (`10m`, `2h`).
    #[arg(long, conflicts_with = "seq")]
    pub since: Option<String>,
    /// Replay from this stream sequence.
    #[arg(long)]
    pub seq: Option<u64>,
    /// Print raw JSON lines.
    #[arg(long)]
    pub json: bool,
}

/// `orch schemas`.
#[derive(clap::Args, Debug)]
pub struct SchemasArgs {
    /// Output directory.
    #[arg(long, default_value = "schemas")]
    pub out: PathBuf,
}

async fn connect(nats: &NatsArgs) -> anyhow::Result<Orchestrator> {
    let (client, _) = nats.connect("orch-cli").await?;
    Ok(Orchestrator::from_client(client))
}

fn ms(d: Option<Duration>) -> Option<u64> {
    d.map(|d| d.as_millis() as u64)
}

pub async fn submit(nats: &NatsArgs, a: SubmitArgs) -> anyhow::Result<ExitCode> {
    let screenshot = match &a.screenshot {
        Some(p) => Some(
            std::fs::read(p)
                .with_context(|| format!("reading screenshot {}", p.display()))?
                .into(),
        ),
        None => None,
    };
    let task_id: TaskId = match &a.task_id {
        Some(id) => id.parse()?,
        None => TaskId::generate(),
    };
    let timeouts = (a.parallel_timeout.is_some()
        || a.reasoning_timeout.is_some()
        || a.verification_timeout.is_some())
    .then(|| Timeouts {
        parallel_ms: ms(a.parallel_timeout),
        reasoning_ms: ms(a.reasoning_timeout),
        verification_ms: ms(a.verification_timeout),
    });
    let req = SubmitRequest {
        task: a.task.clone(),
        tools: a.tools.clone(),
        available_tools: a.available_tools.clone(),
        context: a.context.clone(),
        screenshot,
        web_search_query: a.query.clone(),
        verify: if a.verify {
            Some(true)
        } else if a.no_verify {
            Some(false)
        } else {
            None
        },
        timeouts,
        task_id: Some(task_id.to_string()),
        screenshot_ref: None,
        cache: a.no_cache.then_some(false),
    };
    let mut orch = connect(nats).await?;
    if a.msgpack {
        orch = orch.with_msgpack();
    }
    let progress = if a.json {
        None
    } else {
        let mut events = orch.events(Some(&task_id)).await?;
        orch.nats()
            .flush()
            .await
            .context("flushing the event subscription")?;
        println!("task {task_id} submitted");
        Some(tokio::spawn(async move {
            while let Some(e) = events.next().await {
                if let Some(line) = render::progress_line(&e) {
                    println!("  {line}");
                }
                if matches!(e.kind, EventKind::ActionComplete | EventKind::ActionFailed) {
                    break;
                }
            }
        }))
    };
    let result = if a.durable {
        let id = orch.submit_durable(&req).await?;
        if a.no_wait {
            if let Some(p) = progress {
                p.abort();
            }
            println!("{id}");
            return Ok(ExitCode::SUCCESS);
        }
        orch.wait_result(&id, Duration::from_secs(600)).await
    } else {
        orch.execute(&req).await
    };
    if let Some(p) = progress {
        // The final event usually arrives before the reply; don't wait long for stragglers.
        let _ = tokio::time::timeout(Duration::from_millis(200), p).await;
    }
    let result = result?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&result)?);
    } else {
        print!("{}", render::result(&result));
    }
    Ok(if result.succeeded() || result.primary_answer.is_some() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}

pub async fn stats(nats: &NatsArgs, a: JsonFlag) -> anyhow::Result<ExitCode> {
    let s = connect(nats).await?.stats().await?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&s)?);
    } else {
        print!("{}", render::stats(&s));
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn workers(nats: &NatsArgs, a: WorkersArgs) -> anyhow::Result<ExitCode> {
    let found = connect(nats).await?.workers(a.wait).await?;
    if a.json {
        let v: Vec<_> = found
            .iter()
            .map(|s| {
                serde_json::json!({
                    "name": s.name, "id": s.id, "version": s.version, "metadata": s.metadata,
                    "subjects": s.subjects, "requests": s.requests, "errors": s.errors, "stats": s.data,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print!("{}", render::workers(&found));
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn events(nats: &NatsArgs, a: EventsArgs) -> anyhow::Result<ExitCode> {
    let kind = match &a.kind {
        Some(k) => Some(EventKind::parse(k).with_context(|| {
            let all: Vec<_> = EventKind::ALL.iter().map(|k| k.as_str()).collect();
            format!("unknown kind `{k}` (one of {})", all.join(", "))
        })?),
        None => None,
    };
    let task: Option<TaskId> = a.task.as_deref().map(str::parse).transpose()?;
    let from = match (&a.since, a.seq) {
        (Some(since), _) => ReplayFrom::UnixTime(parse_since(since)?),
        (None, Some(seq)) => ReplayFrom::Sequence(seq),
        // One task: its whole history. Everything: from now on.
        (None, None) if task.is_some() => ReplayFrom::Start,
        (None, None) => ReplayFrom::New,
    };
    let orch = connect(nats).await?;
    let mut events = orch.replay_events(task.as_ref(), kind, from).await?;
    while let Some(next) = events.next().await {
        let (seq, e) = next?;
        if a.json {
            let mut v = serde_json::to_value(&e)?;
            v["seq"] = seq.into();
            println!("{v}");
        } else {
            println!(
                "#{seq:<8} {} {} {}",
                e.ts,
                e.task_id,
                render::progress_line(&e).unwrap_or_else(|| e.kind.as_str().into())
            );
        }
        if task.is_some()
            && !a.follow
            && matches!(e.kind, EventKind::ActionComplete | EventKind::ActionFailed)
        {
            break;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Parses `--since`: RFC 3339, or an age such as `10m` (meaning that long ago).
fn parse_since(s: &str) -> anyhow::Result<i64> {
    if let Ok(t) = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339) {
        return Ok(t.unix_timestamp());
    }
    let age =
        parse_duration(s).map_err(|e| anyhow::anyhow!("--since: {e} (or an RFC 3339 time)"))?;
    Ok(time::OffsetDateTime::now_utc().unix_timestamp() - age.as_secs() as i64)
}

pub async fn result(nats: &NatsArgs, a: ResultArgs) -> anyhow::Result<ExitCode> {
    let id: TaskId = a.task_id.parse()?;
    let orch = connect(nats).await?;
    let r = match a.wait {
        Some(w) => orch.wait_result(&id, w).await?,
        None => orch.result(&id).await?,
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        print!("{}", render::result(&r));
    }
    Ok(if r.succeeded() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}

pub fn schemas(a: SchemasArgs) -> anyhow::Result<ExitCode> {
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    for (file, schema) in orch_shared::schema::all() {
        let path = a.out.join(file);
        std::fs::write(&path, orch_shared::schema::render(&schema))
            .with_context(|| format!("writing {}", path.display()))?;
        println!("{}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}
