//! `leaky policy simulate FILE.wasm --param k=v ... --trace FILE.csv`: replays `time_ms,tokens`
//! rows through a rate limiter, committing state only for admitted requests (as the server
//! does), and prints each verdict and a summary. How an operator tries a policy before
//! uploading it.

use anyhow::{Context, Result, bail};
use leaky_engine::{Outcome, Request};
use std::path::Path;

/// One request of the trace.
#[derive(Debug, PartialEq, Eq)]
struct Row {
    time_ms: u64,
    tokens: u64,
}

/// Runs the simulation and prints the verdicts to stdout.
pub fn run(file: &Path, raw_params: &[String], trace: &Path) -> Result<()> {
    let params = parse_params(raw_params)?;
    let rows = read_trace(trace)?;
    let limiter = super::engine()?
        .load_rate_limiter(&super::read_component(file)?)
        .with_context(|| format!("{} was refused", file.display()))?;
    let config = limiter.configure(&params)?;

    println!("time_ms,tokens,outcome,remaining,retry_after_ms");
    let (mut allowed, mut refused, mut admitted) = (0u64, 0u64, 0u64);
    let mut state = None;
    for row in rows {
        let decision = limiter.decide(&config, state, Request { tokens: row.tokens, now_ms: row.time_ms })?;
        let v = &decision.verdict;
        let outcome = match v.outcome {
            Outcome::Allowed => "allowed",
            Outcome::RateLimited => "rate-limited",
            Outcome::ExceedsCapacity => "exceeds-capacity",
        };
        println!("{},{},{},{},{}", row.time_ms, row.tokens, outcome, v.remaining, v.retry_after_ms);
        if v.outcome == Outcome::Allowed {
            allowed += 1;
            admitted += row.tokens;
            state = Some(decision.state);
        } else {
            refused += 1;
        }
    }
    println!();
    println!("strategy: {}", limiter.strategy());
    println!("allowed: {allowed}, refused: {refused}, tokens admitted: {admitted}");
    Ok(())
}

/// Parses `name=value` arguments.
pub(super) fn parse_params(raw: &[String]) -> Result<Vec<(String, String)>> {
    raw.iter()
        .map(|p| match p.split_once('=') {
            Some((name, value)) if !name.trim().is_empty() => Ok((name.trim().to_string(), value.trim().to_string())),
            _ => bail!("--param must look like name=value, got `{p}`"),
        })
        .collect()
}

/// Reads `time_ms,tokens` rows; a first row that is not numeric is taken as a header.
fn read_trace(path: &Path) -> Result<Vec<Row>> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .trim(csv::Trim::All)
        .comment(Some(b'#'))
        .from_path(path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let mut rows = Vec::new();
    for (index, record) in reader.records().enumerate() {
        let record = record.with_context(|| format!("{}: row {}", path.display(), index + 1))?;
        let field = |i: usize| record.get(i).unwrap_or("").parse::<u64>();
        match (field(0), field(1), record.len()) {
            (Ok(time_ms), Ok(tokens), 2) => rows.push(Row { time_ms, tokens }),
            _ if index == 0 => continue, // a header
            _ => bail!("{}: row {} must be `time_ms,tokens` (two whole numbers)", path.display(), index + 1),
        }
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn params_need_an_equals_sign_and_a_name() {
        assert_eq!(parse_params(&["capacity=10".into()]).unwrap(), vec![("capacity".into(), "10".into())]);
        assert!(parse_params(&["capacity".into()]).is_err());
        assert!(parse_params(&["=10".into()]).is_err());
    }

    #[test]
    fn traces_take_an_optional_header_and_name_a_bad_row() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        writeln!(file, "time_ms,tokens\n0,5\n# a comment\n1000,7").unwrap();
        assert_eq!(
            read_trace(file.path()).unwrap(),
            vec![Row { time_ms: 0, tokens: 5 }, Row { time_ms: 1000, tokens: 7 }]
        );

        let mut bad = tempfile::NamedTempFile::new().unwrap();
        writeln!(bad, "0,5\n10,x").unwrap();
        let err = read_trace(bad.path()).unwrap_err().to_string();
        assert!(err.contains("row 2"), "{err}");
    }
}
