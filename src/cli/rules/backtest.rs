//! `sessiond rules backtest`: the replay (`commands::backtest`) fed from the store or from an
//! export file, its report as a table (or JSON), its firings as NDJSON, a progress line.

use crate::StartError;
use crate::commands::backtest::{ExportLine, Replay, Replayed};
use crate::domain::Timestamp;
use crate::rules::RuleSet;
use crate::rules::backtest::{BacktestReport, FiringLine};
use crate::rules::breaker::BreakerConfig;
use crate::store::{EventFilter, Store};
use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};

/// What to replay and where the answers go.
pub(super) struct Run {
    pub set: RuleSet,
    pub breaker: BreakerConfig,
    pub since: Option<Timestamp>,
    pub until: Option<Timestamp>,
    pub firings: Option<PathBuf>,
}

/// The firings file (created 0600: it names users and sessions) and how many were written.
struct Sink {
    out: Option<std::io::BufWriter<std::fs::File>>,
}

impl Sink {
    fn open(path: Option<&Path>) -> Result<Sink, StartError> {
        let out = path
            .map(|p| {
                super::super::private_file(p)
                    .map(std::io::BufWriter::new)
                    .map_err(|e| StartError::Io(format!("{}: {e}", p.display())))
            })
            .transpose()?;
        Ok(Sink { out })
    }

    fn write(&mut self, lines: &[FiringLine]) -> Result<(), StartError> {
        let Some(out) = &mut self.out else {
            return Ok(());
        };
        for l in lines {
            serde_json::to_writer(&mut *out, l).map_err(|e| StartError::Io(e.to_string()))?;
            out.write_all(b"\n").map_err(io)?;
        }
        Ok(())
    }

    fn close(self) -> Result<(), StartError> {
        if let Some(mut out) = self.out {
            out.flush().map_err(io)?;
        }
        Ok(())
    }
}

fn io(e: std::io::Error) -> StartError {
    StartError::Io(e.to_string())
}

/// A progress line on stderr, only when it is a terminal, at most a few times a second.
/// Hand-written: `indicatif` is not among the packages listed for this project's machines, and
/// a bar with a count is all a replay needs.
struct Progress {
    on: bool,
    last: std::time::Instant,
    shown: bool,
}

impl Progress {
    fn new() -> Progress {
        Progress {
            on: std::io::stderr().is_terminal(),
            last: std::time::Instant::now(),
            shown: false,
        }
    }

    fn tick(&mut self, done: u64, total: u64, events: u64) {
        if !self.on || self.last.elapsed() < std::time::Duration::from_millis(200) {
            return;
        }
        self.last = std::time::Instant::now();
        let pct = (done.min(total) * 100).checked_div(total).unwrap_or(100);
        let filled = (pct / 5) as usize;
        eprint!(
            "\r[{}{}] {pct:>3}% {events} events",
            "#".repeat(filled),
            " ".repeat(20 - filled)
        );
        self.shown = true;
    }

    fn done(&self) {
        if self.shown {
            eprintln!();
        }
    }
}

/// Replays an export file (`sessiond events export` or `GET /v1/admin/events/export`).
/// A line that is not JSON, or an event that cannot be decoded, stops the run naming the line.
pub(super) async fn from_file(run: Run, input: &Path) -> Result<BacktestReport, StartError> {
    let named = |e: std::io::Error| StartError::Io(format!("{}: {e}", input.display()));
    let file = std::fs::File::open(input).map_err(named)?;
    let total = file.metadata().map_err(named)?.len();
    let mut reader = std::io::BufReader::new(file);
    let mut replay = Replay::new(run.set, run.breaker, run.since, run.until);
    let mut sink = Sink::open(run.firings.as_deref())?;
    let mut progress = Progress::new();
    let (mut text, mut line_no, mut read) = (String::new(), 0u64, 0u64);
    loop {
        text.clear();
        let n = reader.read_line(&mut text).map_err(named)?;
        if n == 0 {
            break;
        }
        read += n as u64;
        line_no += 1;
        let bad = |why: String| {
            StartError::Io(format!(
                "{}: line {line_no}: {why}; nothing was reported",
                input.display()
            ))
        };
        let Some(line) = ExportLine::parse(&text).map_err(|e| bad(e.to_string()))? else {
            continue;
        };
        let (event, at) = line.decode().map_err(|e| bad(e.to_string()))?;
        if replay.past_until(at) {
            break;
        }
        let fired = replay
            .replay(Replayed {
                position: line.position,
                stream_id: &line.stream_id,
                occurred_at: at,
                request_id: line.request_id(),
                event,
            })
            .await?;
        sink.write(&fired)?;
        progress.tick(read, total, line_no);
    }
    progress.done();
    sink.close()?;
    Ok(replay.finish())
}

/// Replays the store's own log, in pages.
pub(super) async fn from_store(run: Run, store: &Store) -> Result<BacktestReport, StartError> {
    let head = store.head().await?.position.max(0) as u64;
    let mut replay = Replay::new(run.set, run.breaker, run.since, run.until);
    let mut sink = Sink::open(run.firings.as_deref())?;
    let mut progress = Progress::new();
    let mut filter = EventFilter {
        until: run.until,
        limit: Some(1000),
        ..Default::default()
    };
    loop {
        let page = store.events(&filter).await?;
        let Some(last) = page.last() else { break };
        filter.after_position = last.position;
        for recorded in &page {
            let meta: serde_json::Value =
                serde_json::from_str(&recorded.metadata).unwrap_or_default();
            let fired = replay
                .replay(Replayed {
                    position: recorded.position,
                    stream_id: &recorded.stream_id,
                    occurred_at: recorded.occurred_at()?,
                    request_id: meta.get("request_id").and_then(|v| v.as_str()),
                    event: recorded.decode()?,
                })
                .await?;
            sink.write(&fired)?;
        }
        progress.tick(
            last.position.max(0) as u64,
            head,
            filter.after_position as u64,
        );
    }
    progress.done();
    sink.close()?;
    Ok(replay.finish())
}

/// The report on stdout: JSON, or a table per rule (by action, with the top explanations).
pub(super) fn print(report: &BacktestReport, json: bool) -> Result<(), StartError> {
    if json {
        let text =
            serde_json::to_string_pretty(report).map_err(|e| StartError::Io(e.to_string()))?;
        println!("{text}");
        return Ok(());
    }
    println!(
        "replayed {} events, {} judged",
        report.events_replayed, report.events_judged
    );
    println!(
        "{:<28} {:<18} {:>8} {:>9} {:>6}",
        "rule", "action", "firings", "sessions", "users"
    );
    for (rule, hits) in &report.rules {
        println!(
            "{:<28} {:<18} {:>8} {:>9} {:>6}",
            rule,
            "(all)",
            hits.firings,
            hits.sessions.len(),
            hits.users.len()
        );
        for (action, a) in &hits.by_action {
            println!(
                "{:<28} {:<18} {:>8} {:>9} {:>6}",
                "",
                action,
                a.firings,
                a.sessions.len(),
                a.users.len()
            );
        }
        for e in &hits.top_explanations {
            println!("    {:>6}x  {}", e.firings, e.explanation);
        }
        for s in &hits.sessions {
            println!("    session {s}");
        }
        for u in &hits.usernames {
            println!("    username {u}");
        }
    }
    Ok(())
}
