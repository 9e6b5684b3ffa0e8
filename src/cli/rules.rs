//! `sessiond rules lint|test|backtest`.

use super::{Common, time_arg};
use crate::StartError;
use crate::rules::RuleSet;
use crate::rules::file::load_dir;
use crate::store::EventFilter;
use clap::{Args, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Subcommand)]
pub(super) enum RulesCmd {
    /// Load and validate the rule files; report every broken one with file and line.
    Lint {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        rules: RulesDir,
    },
    /// Run every rule's inline [[rule.test]] cases.
    Test {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        rules: RulesDir,
    },
    /// Replay stored events through the rules and report what would have fired, by rule.
    /// Writes nothing.
    Backtest {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        rules: RulesDir,
        /// Report firings at or after this RFC 3339 time (earlier history still builds baselines).
        #[arg(long)]
        since: Option<String>,
        /// Replay events before this RFC 3339 time.
        #[arg(long)]
        until: Option<String>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args, Clone)]
pub(super) struct RulesDir {
    /// Rule directory [env: SESSIOND_RULES] [default: the configured one, else ./rules]
    #[arg(long, value_name = "DIR")]
    rules: Option<PathBuf>,
}

impl RulesDir {
    /// The flag, else the configured directory (file or SESSIOND_RULES), else `./rules`.
    fn resolve(&self, common: &Common) -> Result<PathBuf, StartError> {
        if let Some(dir) = &self.rules {
            return Ok(dir.clone());
        }
        Ok(common
            .config(None)?
            .rules
            .unwrap_or_else(|| PathBuf::from("rules")))
    }

    fn load(&self, common: &Common) -> Result<RuleSet, StartError> {
        load_dir(&self.resolve(common)?).map_err(StartError::Rules)
    }
}

pub(super) async fn rules_command(command: RulesCmd) -> Result<ExitCode, StartError> {
    match command {
        RulesCmd::Lint { common, rules } => {
            let dir = rules.resolve(&common)?;
            match load_dir(&dir) {
                Ok(set) => {
                    println!("{}: {} rules ok", dir.display(), set.rules.len());
                    for r in &set.rules {
                        println!(
                            "  {} v{} {} ({})",
                            r.id,
                            r.version,
                            r.mode.as_str(),
                            r.source
                        );
                    }
                    Ok(ExitCode::SUCCESS)
                }
                Err(errors) => {
                    for e in errors {
                        println!("{e}");
                    }
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        RulesCmd::Test { common, rules } => {
            let set = rules.load(&common)?;
            let results = crate::rules::cases::run_all(&set.rules);
            let failed = results.iter().filter(|(_, _, r)| r.is_err()).count();
            for (rule, case, result) in &results {
                match result {
                    Ok(()) => println!("ok    {rule}: {case}"),
                    Err(why) => println!("FAIL  {rule}: {case}: {why}"),
                }
            }
            println!(
                "{} cases, {} passed, {failed} failed",
                results.len(),
                results.len() - failed
            );
            Ok(if failed == 0 && !results.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        RulesCmd::Backtest {
            common,
            rules,
            since,
            until,
            json,
        } => {
            let set = rules.load(&common)?;
            let since = since.as_deref().map(time_arg("--since")).transpose()?;
            let until = until.as_deref().map(time_arg("--until")).transpose()?;
            let store = common.store().await?;
            let mut replay = crate::rules::backtest::Backtest::new(set, since);
            let mut filter = EventFilter {
                until,
                limit: Some(1000),
                ..Default::default()
            };
            loop {
                let page = store.events(&filter).await?;
                let Some(last) = page.last() else { break };
                filter.after_position = last.position;
                for recorded in &page {
                    replay.replay(&recorded.decode()?, recorded.occurred_at()?);
                }
            }
            let report = replay.finish();
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&report)
                        .map_err(|e| StartError::Io(e.to_string()))?
                );
            } else {
                println!("replayed {} events", report.events_replayed);
                for (rule, hits) in &report.rules {
                    println!(
                        "{rule}: {} firings, {} sessions, {} users",
                        hits.firings,
                        hits.sessions.len(),
                        hits.users.len()
                    );
                    for s in &hits.sessions {
                        println!("  session {s}");
                    }
                    for u in &hits.usernames {
                        println!("  username {u}");
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
