//! `cargo xtask bench-http --binary A --against B --rounds N`: two builds measured in turns.
//!
//! This machine's speed drifts by up to a factor of two within an hour, and a run can be slowed
//! by the one before it (its files still being written back). So the builds run in pairs whose
//! order alternates (A then B, then B then A, ...), and the summary compares each pair's runs
//! with each other: the median over the pairs of B's figure divided by A's, beside each build's
//! own figures.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};

use crate::load::{self, Load, Measured};

/// Runs `rounds` pairs of `load` against `first` and `second`, alternating which goes first,
/// and prints each run's figures and the median ratio of the pairs.
pub fn compare(root: &Path, target_dir: &Path, load: &Load, first: &Path, second: &Path, rounds: usize) -> Result<()> {
    if load::on_postgres() && !load.distributed {
        bail!(
            "a run on PostgreSQL needs a fresh database each time: compare with --distributed, which gives \
             each run backends of its own"
        );
    }
    let builds = [first, second];
    let mut pairs: Vec<[Measured; 2]> = Vec::with_capacity(rounds);
    for round in 0..rounds {
        let order = if round.is_multiple_of(2) { [0, 1] } else { [1, 0] };
        let mut pair = [None, None];
        for index in order {
            println!("== round {} of {rounds}: {}", round + 1, builds[index].display());
            let run = Load { binary: Some(PathBuf::from(builds[index])), ..load.clone() };
            pair[index] = Some(load::bench(root, target_dir, &run)?);
        }
        if let [Some(a), Some(b)] = pair {
            pairs.push([a, b]);
        }
    }
    summarise(&builds, &pairs);
    Ok(())
}

/// One figure of a run, by name.
type Figure = (&'static str, fn(&Measured) -> Option<f64>);

const FIGURES: [Figure; 5] = [
    ("req/s", |m| Some(m.requests_per_second)),
    ("server us/request", |m| m.server_us),
    ("postgres us/request", |m| m.postgres_us),
    ("machine us/request", |m| m.machine_us),
    ("bytes written/request", |m| m.written_bytes),
];

fn summarise(builds: &[&Path; 2], pairs: &[[Measured; 2]]) {
    println!("\n== {} pairs, the order alternating", pairs.len());
    println!("A: {}\nB: {}", builds[0].display(), builds[1].display());
    for (name, figure) in FIGURES {
        let runs = |index: usize| -> Vec<String> {
            pairs.iter().map(|pair| figure(&pair[index]).map_or_else(|| "-".into(), |v| format!("{v:.1}"))).collect()
        };
        let ratios: Vec<f64> =
            pairs.iter().filter_map(|[a, b]| Some(figure(b)? / figure(a)?)).filter(|ratio| ratio.is_finite()).collect();
        let median = median(ratios).map_or_else(|| "-".into(), |r| format!("{r:.3}"));
        println!("{name:>22}: A {} | B {} | median B/A {median}", runs(0).join(", "), runs(1).join(", "));
    }
}

/// The median of `values`, if there are any.
fn median(mut values: Vec<f64>) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let middle = values.len() / 2;
    Some(if values.len().is_multiple_of(2) { (values[middle - 1] + values[middle]) / 2.0 } else { values[middle] })
}

#[cfg(test)]
mod tests {
    use super::median;

    #[test]
    fn the_median_of_an_even_count_is_the_mean_of_the_middle_two() {
        assert_eq!(median(vec![]), None);
        assert_eq!(median(vec![3.0]), Some(3.0));
        assert_eq!(median(vec![4.0, 1.0, 3.0]), Some(3.0));
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), Some(2.5));
    }
}
