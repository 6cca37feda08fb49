//! Whether the servers kept up: a run's requests per second count only if the work each consume
//! leaves behind (its event relayed from the outbox to the bus, then read by the analytics
//! consumer) kept pace with it. Read from the servers' own counters on `/metrics`, summed over
//! the replicas, when the load stops; then read again until the analytics consumer has read as
//! many events as consumes were answered, or a deadline passes. The relay publishes at least
//! once, so with several replicas an event can be read twice (and recorded once).

use std::time::{Duration, Instant};

use anyhow::{Result, bail};

/// The servers' counters of the stages a consume passes through.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stages {
    /// Consumes answered, every outcome (`leaky_consume_total`).
    pub consumes: u64,
    /// Events the outbox relay published (`leaky_outbox_relayed_total`).
    pub relayed: u64,
    /// Events the analytics consumer read (`leaky_analytics_consumed_total`; `None` where no
    /// server consumes from a broker).
    pub read_by_analytics: Option<u64>,
}

impl Stages {
    /// Consumes answered whose event the analytics consumer has not read (all of them where no
    /// server consumes from a broker).
    fn analytics_behind(&self) -> u64 {
        self.consumes.saturating_sub(self.read_by_analytics.unwrap_or(0))
    }
}

/// How long to wait, once the load stops, for the analytics to catch up.
const CATCH_UP_WITHIN: Duration = Duration::from_secs(30);

/// Reads the stages of every server in `addrs` when the load stops, prints them, and prints how
/// long the analytics consumer then took to read as many events as consumes were answered.
pub async fn report(addrs: &[String]) -> Result<()> {
    let stopped = Instant::now();
    let at_stop = read_all(addrs).await?;
    let Some(read_by_analytics) = at_stop.read_by_analytics else {
        println!(
            "kept up:    {} consumes answered, {} events relayed when the load stopped",
            at_stop.consumes, at_stop.relayed
        );
        return Ok(());
    };
    println!(
        "kept up:    when the load stopped, {} consumes answered, {} events relayed ({} behind), {read_by_analytics} read by \
         analytics ({} behind)",
        at_stop.consumes,
        at_stop.relayed,
        at_stop.consumes.saturating_sub(at_stop.relayed),
        at_stop.analytics_behind()
    );
    let mut now = at_stop;
    while now.analytics_behind() > 0 {
        if stopped.elapsed() > CATCH_UP_WITHIN {
            println!(
                "            {} events still not read by analytics {} s after the load stopped",
                now.analytics_behind(),
                CATCH_UP_WITHIN.as_secs()
            );
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        now = read_all(addrs).await?;
    }
    println!(
        "            analytics caught up {:.1} s after the load stopped (as many events read as consumes answered)",
        stopped.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The stages summed over every server in `addrs`.
async fn read_all(addrs: &[String]) -> Result<Stages> {
    let mut sum = Stages::default();
    for addr in addrs {
        let (status, text) = super::request(addr, "GET", "/metrics", None, "").await?;
        if status != 200 {
            bail!("GET /metrics on {addr} answered {status}");
        }
        let one = parse(&text);
        sum.consumes += one.consumes;
        sum.relayed += one.relayed;
        if let Some(read) = one.read_by_analytics {
            *sum.read_by_analytics.get_or_insert(0) += read;
        }
    }
    Ok(sum)
}

/// The stages in one Prometheus text exposition, each the sum of its series.
fn parse(text: &str) -> Stages {
    let mut stages = Stages::default();
    for line in text.lines().filter(|line| !line.starts_with('#')) {
        let name = line.split(['{', ' ']).next().unwrap_or("");
        let value = line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        // Counters are whole numbers, written as floats.
        let value = value as u64;
        match name {
            "leaky_consume_total" => stages.consumes += value,
            "leaky_outbox_relayed_total" => stages.relayed += value,
            "leaky_analytics_consumed_total" => *stages.read_by_analytics.get_or_insert(0) += value,
            _ => {}
        }
    }
    stages
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_stage_sums_its_series_and_other_metrics_are_passed_over() {
        let text = "# TYPE leaky_consume_total counter\n\
                    leaky_consume_total{outcome=\"allowed\"} 120\n\
                    leaky_consume_total{outcome=\"rate_limited\"} 3\n\
                    leaky_consume_totally_different 99\n\
                    leaky_outbox_relayed_total 118\n\
                    leaky_analytics_consumed_total 100\n";
        assert_eq!(parse(text), Stages { consumes: 123, relayed: 118, read_by_analytics: Some(100) });
    }

    #[test]
    fn without_an_analytics_consumer_nothing_is_read_by_one() {
        let text = "leaky_consume_total{outcome=\"allowed\"} 5\nleaky_outbox_relayed_total 5\n";
        assert_eq!(parse(text), Stages { consumes: 5, relayed: 5, read_by_analytics: None });
    }
}
