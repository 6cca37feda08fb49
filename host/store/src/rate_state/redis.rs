//! Rate state in Redis: one string per (user, provider), written by a compare-and-set script
//! (the compare-and-sets that queue up together go in one call: [`super::cas_batch`]). An
//! encoded state is never empty: it starts with its strategy's name, so the empty string can
//! stand for "absent".

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, Value};

use super::cas_batch::CasBatcher;
use super::{BoxFuture, RateKey, RateStateError, SharedRateState, StoredRate, Swap};

/// Redis-backed rate state.
pub struct RedisRateState {
    connection: ConnectionManager,
    batcher: CasBatcher,
    prefix: String,
}

fn backend(err: redis::RedisError) -> RateStateError {
    RateStateError::Backend(err.to_string())
}

/// A stored state read back as text.
fn decode(text: &[u8]) -> Result<StoredRate, RateStateError> {
    let text = String::from_utf8_lossy(text);
    StoredRate::decode(&text).ok_or_else(|| RateStateError::Corrupt(text.into_owned()))
}

/// What the compare-and-set script answered for one key.
fn swap(answer: Value) -> Result<Swap, RateStateError> {
    match answer {
        Value::Int(1) => Ok(Swap::Stored),
        Value::BulkString(current) if current.is_empty() => Ok(Swap::Lost(None)),
        Value::BulkString(current) => Ok(Swap::Lost(Some(decode(&current)?))),
        other => Err(RateStateError::Corrupt(format!("unexpected compare-and-set answer {other:?}"))),
    }
}

impl RedisRateState {
    /// Connects to `url` (e.g. `redis://127.0.0.1:6379`). The connection reconnects by itself
    /// after Redis comes back; each call fails fast while it is away.
    pub async fn connect(url: &str, prefix: &str) -> Result<Self, RateStateError> {
        let client = Client::open(url).map_err(backend)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(std::time::Duration::from_millis(500))
            .set_response_timeout(std::time::Duration::from_millis(500))
            .set_number_of_retries(1);
        let connection = ConnectionManager::new_with_config(client, config).await.map_err(backend)?;
        let batcher = CasBatcher::start(connection.clone());
        Ok(Self { connection, batcher, prefix: prefix.to_string() })
    }

    fn redis_key(&self, key: &RateKey) -> String {
        // One allocation of the whole length (`format!` grows its string as it writes).
        [self.prefix.as_str(), "rate:", &key.provider, ":", &key.subject].concat()
    }
}

impl SharedRateState for RedisRateState {
    fn get<'a>(&'a self, key: &'a RateKey) -> BoxFuture<'a, Result<Option<StoredRate>, RateStateError>> {
        Box::pin(async move {
            let mut connection = self.connection.clone();
            let text: Option<Vec<u8>> =
                redis::cmd("GET").arg(self.redis_key(key)).query_async(&mut connection).await.map_err(backend)?;
            text.as_deref().map(decode).transpose()
        })
    }

    fn compare_and_set<'a>(
        &'a self,
        key: &'a RateKey,
        expected: Option<&'a StoredRate>,
        new: &'a StoredRate,
        ttl_ms: u64,
    ) -> BoxFuture<'a, Result<Swap, RateStateError>> {
        Box::pin(async move {
            let expected = expected.map(StoredRate::encode).unwrap_or_default();
            let answer = self.batcher.compare_and_set(self.redis_key(key), expected, new.encode(), ttl_ms).await?;
            swap(answer)
        })
    }
}
