//! `sessiond rules lint|test|backtest`.

use super::{Common, time_arg};
use crate::StartError;
use crate::rules::RuleSet;
use crate::rules::file::load_dir;
use clap::{Args, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

mod backtest;

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
    /// Replay stored events (or an export file) through the rules and report what would have
    /// fired, by rule and action. Writes nothing but the --firings file.
    Backtest {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        rules: RulesDir,
        /// Replay this export (NDJSON from `events export` or the API's export) instead of the
        /// store. Export with the master key at hand: a --sealed export cannot be replayed.
        #[arg(long, value_name = "FILE")]
        input: Option<PathBuf>,
        /// Write each firing as one NDJSON line to FILE (created 0600).
        #[arg(long, visible_alias = "output", value_name = "FILE")]
        firings: Option<PathBuf>,
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
            input,
            firings,
            since,
            until,
            json,
        } => {
            let set = rules.load(&common)?;
            let run = backtest::Run {
                set,
                breaker: crate::app::breaker_config(&common.config(None)?),
                since: since.as_deref().map(time_arg("--since")).transpose()?,
                until: until.as_deref().map(time_arg("--until")).transpose()?,
                firings,
            };
            let report = match input {
                Some(file) => backtest::from_file(run, &file).await?,
                None => backtest::from_store(run, &common.store().await?).await?,
            };
            backtest::print(&report, json)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
