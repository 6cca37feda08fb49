//! The PostgreSQL advisory locks the store takes, in one place so that no two uses share a key
//! (two uses of one key would make unrelated transactions wait for each other).

/// Held by the outbox relay while it publishes a round: replicas take turns.
pub const RELAY: i64 = 0x6c65_616b_7901;
/// Held from a transaction's first outbox row to its commit, so outbox rows become visible in
/// `seq` order.
pub const OUTBOX: i64 = 0x6c65_616b_7902;
/// Held by an insert of analytics events from before its rows draw `seq` to its commit, so
/// events become visible in `seq` order ([`crate::analytics::rollup`]).
pub const ANALYTICS_RECORD: i64 = 0x6c65_616b_7903;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_lock_has_a_key_of_its_own() {
        let keys = [RELAY, OUTBOX, ANALYTICS_RECORD];
        let distinct: std::collections::BTreeSet<i64> = keys.into_iter().collect();
        assert_eq!(distinct.len(), keys.len());
    }
}
