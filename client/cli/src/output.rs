//! `--output text|json` for the commands that list or describe things.
//! JSON is for scripts: lists and streams print one object per line (so
//! `jq` and line-oriented tools work as the output arrives), a describe
//! prints one object.

use std::io::Write;

use clap::{Args, ValueEnum};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub(crate) enum Output {
    /// Tab-separated columns with a header line, for people.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(Debug, Clone, Args)]
pub(crate) struct OutputArgs {
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t)]
    pub(crate) output: Output,
}

impl OutputArgs {
    pub(crate) fn json(&self) -> bool {
        self.output == Output::Json
    }
}

/// Writes `value` as one line of JSON.
pub(crate) fn json_line(out: &mut impl Write, value: &serde_json::Value) -> std::io::Result<()> {
    serde_json::to_writer(&mut *out, value)?;
    out.write_all(b"\n")
}

/// Prints `value` as one line of JSON on stdout.
pub(crate) fn print_json(value: &serde_json::Value) -> std::io::Result<()> {
    json_line(&mut std::io::stdout().lock(), value)
}
