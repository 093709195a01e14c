//! A small command-line tool over the registry of the binary that calls it.
//!
//! A binary's events and listeners are known only inside it, so the tool is a
//! function your binary calls (for example behind a `--eventing` argument or as a
//! separate `[[bin]]` that links the same crates):
//!
//! ```no_run
//! fn main() -> std::process::ExitCode {
//!     eventing::cli::main()
//! }
//! ```
//!
//! ```text
//! registry                                   the events and listeners of this binary
//! topology  [--server NAME] [--var K=V]...   the queues a manager would create
//! send      --event NAME --json JSON [--url URL] [--var K=V]...
//! dead-letters --queue QUEUE [--limit N] [--url URL] [--var K=V]...
//! replay    --queue QUEUE [--limit N] [--url URL] [--var K=V]...
//! asyncapi  [--server NAME] [--var K=V]...   an AsyncAPI 3.0 document (JSON)
//! ```
//!
//! The URL defaults to `EVENTING_URL` (then `memory://`); it is never printed.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::process::ExitCode;

use bytes::Bytes;

use crate::envelope::Envelope;
use crate::error::Error;
use crate::manager::{EventManager, EventManagerBuilder, URL_VARIABLE};
use crate::provider::Route;
use crate::registry;
use crate::topology::QueueSpec;

/// What can go wrong in a command: bad arguments, or the runtime's own error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CliError {
    /// The command line was malformed; the message says how, with the usage.
    #[error("{0}")]
    Usage(String),
    /// The command ran and failed.
    #[error(transparent)]
    Eventing(#[from] Error),
}

/// Result of a command.
pub type Result<T, E = CliError> = std::result::Result<T, E>;

/// Parsed arguments.
#[derive(Debug, Default)]
struct Args {
    command: String,
    options: HashMap<String, String>,
    vars: Vec<(String, String)>,
}

fn parse(args: impl IntoIterator<Item = String>) -> std::result::Result<Args, String> {
    let mut parsed = Args::default();
    let mut args = args.into_iter();
    parsed.command = args.next().ok_or_else(usage)?;
    while let Some(flag) = args.next() {
        let name = flag
            .strip_prefix("--")
            .ok_or_else(|| format!("unexpected argument `{flag}`\n{}", usage()))?;
        let value = args
            .next()
            .ok_or_else(|| format!("--{name} needs a value"))?;
        if name == "var" {
            let (k, v) = value
                .split_once('=')
                .ok_or_else(|| format!("--var takes KEY=VALUE, got `{value}`"))?;
            parsed.vars.push((k.to_string(), v.to_string()));
        } else if !["server", "event", "json", "url", "queue", "limit"].contains(&name) {
            return Err(format!("unknown option --{name}\n{}", usage()));
        } else {
            parsed.options.insert(name.to_string(), value);
        }
    }
    Ok(parsed)
}

fn usage() -> String {
    "usage: registry | topology [--server NAME] | asyncapi [--server NAME] | send --event NAME --json JSON | \
     dead-letters --queue QUEUE [--limit N] | replay --queue QUEUE [--limit N]; \
     options --url URL (default $EVENTING_URL or memory://) and --var KEY=VALUE"
        .to_string()
}

/// Runs the tool with `std::env::args()`, printing the result; the exit code is 0
/// on success, 2 for bad arguments, 1 for other errors.
pub fn main() -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("eventing: cannot start a runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let args = match parse(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(message) => {
            eprintln!("eventing: {message}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(args)) {
        Ok(output) => {
            print!("{output}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("eventing: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Runs one command given as arguments (without the program name) and returns what
/// it prints.
pub async fn run_args(args: impl IntoIterator<Item = String>) -> Result<String> {
    let args = parse(args).map_err(CliError::Usage)?;
    run(args).await
}

fn builder(args: &Args) -> EventManagerBuilder {
    let url = args
        .options
        .get("url")
        .cloned()
        .or_else(|| std::env::var(URL_VARIABLE).ok())
        .unwrap_or_else(|| "memory://".to_string());
    let mut builder = EventManager::builder().url(url).only_bound_listeners();
    if let Some(server) = args.options.get("server") {
        builder = builder.server_name(server);
    }
    for (k, v) in &args.vars {
        builder = builder.var(k, v);
    }
    builder
}

/// A manager (on a private in-process broker) running every registered listener,
/// for describing the binary.
async fn all_listeners(args: &Args) -> Result<EventManager> {
    let mut builder = EventManager::builder().url("memory://eventing-cli");
    if let Some(server) = args.options.get("server") {
        builder = builder.server_name(server);
    }
    for (k, v) in &args.vars {
        builder = builder.var(k, v);
    }
    Ok(builder.build().await?)
}

fn required<'a>(args: &'a Args, name: &str) -> Result<&'a str> {
    args.options
        .get(name)
        .map(String::as_str)
        .ok_or_else(|| CliError::Usage(format!("`{}` needs --{name}", args.command)))
}

/// The queue named `queue` among the registered listeners' queues. Events whose
/// names need a `{placeholder}` the command line did not give (`--var`) are
/// skipped; if none matched, the first such error is returned, as it may be why.
fn queue_spec(manager: &EventManager, queue: &str) -> Result<QueueSpec> {
    let mut unresolved = None;
    for listener in registry::listeners() {
        let event = match manager.address_of(listener.event()) {
            Ok(event) => event,
            Err(error) => {
                unresolved.get_or_insert(error);
                continue;
            }
        };
        let candidates = [
            QueueSpec::new(
                &event,
                listener.name(),
                listener.event().durable(),
                false,
                "",
            ),
            QueueSpec::singleton(&event, listener.name(), listener.event().durable()),
        ];
        if let Some(spec) = candidates.into_iter().find(|q| q.name == queue) {
            return Ok(spec);
        }
    }
    Err(unresolved
        .unwrap_or_else(|| Error::UnknownQueue {
            queue: queue.to_owned(),
        })
        .into())
}

async fn run(args: Args) -> Result<String> {
    let mut out = String::new();
    match args.command.as_str() {
        "registry" => {
            for event in registry::events() {
                let version = event
                    .version()
                    .map(|v| format!(" v{v}"))
                    .unwrap_or_default();
                let durable = if event.durable() { " durable" } else { "" };
                let _ = writeln!(
                    out,
                    "event {}{durable}{version} ({})",
                    event.name(),
                    event.type_name()
                );
            }
            for listener in registry::listeners() {
                let kind = if listener.per_process() {
                    "per process"
                } else if listener.singleton() {
                    "singleton"
                } else {
                    "competing"
                };
                let _ = writeln!(
                    out,
                    "listener {} of {} ({kind}) ({})",
                    listener.name(),
                    listener.event().name(),
                    listener.type_name()
                );
            }
        }
        "topology" => {
            // Every registered listener, as a manager running them all would see it.
            let manager = builder(&args).build().await?;
            let mut topology = manager.topology()?;
            let all = EventManager::builder()
                .url("memory://eventing-cli")
                .server_name(topology.server.clone());
            let all = args
                .vars
                .iter()
                .fold(all, |b, (k, v)| b.var(k, v))
                .build()
                .await?;
            topology.queues = all.topology()?.queues;
            let _ = write!(out, "{topology}");
        }
        "asyncapi" => {
            let manager = all_listeners(&args).await?;
            let doc = crate::asyncapi::document(&manager, "eventing", env!("CARGO_PKG_VERSION"))?;
            let _ = writeln!(out, "{doc:#}");
        }
        "send" => {
            let name = required(&args, "event")?;
            let json = required(&args, "json")?;
            serde_json::from_str::<serde_json::Value>(json).map_err(|e| Error::Decode {
                event: name.to_string(),
                content_type: crate::codec::JSON.to_string(),
                reason: e.to_string(),
            })?;
            let event = registry::events()
                .into_iter()
                .find(|e| e.name() == name || e.type_name().ends_with(&format!("::{name}")))
                .ok_or_else(|| Error::UnknownEvent {
                    name: name.to_owned(),
                })?;
            let manager = builder(&args).build().await?;
            let address = manager.address_of(event)?;
            let envelope =
                Envelope::new(&address, crate::codec::JSON, Bytes::from(json.to_string()));
            let id = envelope.message_id().to_string();
            let route = Route::new(&address, event.durable());
            manager.provider().publish(route, envelope).await?;
            let _ = writeln!(out, "sent {address} message-id {id}");
        }
        "dead-letters" | "replay" => {
            let queue = required(&args, "queue")?;
            let limit = match args.options.get("limit") {
                Some(n) => n
                    .parse()
                    .map_err(|_| CliError::Usage("--limit takes a number".into()))?,
                None => 100,
            };
            let manager = builder(&args).build().await?;
            let spec = queue_spec(&manager, queue)?;
            if args.command == "replay" {
                let moved = manager.replay_dead_letters_of(&spec, limit).await?;
                let _ = writeln!(out, "replayed {moved} message(s) onto {queue}");
            } else {
                for letter in manager.dead_letters_of(&spec, limit).await? {
                    let _ = writeln!(out, "message {}", letter.message_id());
                    for (k, v) in letter.headers.iter() {
                        let _ = writeln!(out, "  {k}: {v}");
                    }
                    let _ = writeln!(out, "  body: {}", String::from_utf8_lossy(&letter.body));
                }
            }
        }
        other => {
            return Err(CliError::Usage(format!(
                "unknown command `{other}`; {}",
                usage()
            )));
        }
    }
    Ok(out)
}
