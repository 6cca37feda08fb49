//! Rate state in Redis: one string per (user, provider), written by a compare-and-set script.

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, Script, Value};

use super::{BoxFuture, RateKey, RateStateError, SharedRateState, StoredRate, Swap};

/// Sets `KEYS[1]` to `ARGV[2]` (expiring in `ARGV[3]` ms) when it holds `ARGV[1]`, where an
/// empty `ARGV[1]` means "absent". Answers the integer 1 when it wrote; when another writer was
/// first, what the key holds instead, as a string (empty: absent). An encoded state is never
/// empty: it starts with its strategy's name.
const COMPARE_AND_SET: &str = r"
local current = redis.call('GET', KEYS[1])
if (current == false and ARGV[1] == '') or current == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return 1
end
return current or ''
";

/// Redis-backed rate state.
pub struct RedisRateState {
    connection: ConnectionManager,
    script: Script,
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

/// What [`COMPARE_AND_SET`] answered.
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
        Ok(Self { connection, script: Script::new(COMPARE_AND_SET), prefix: prefix.to_string() })
    }

    fn redis_key(&self, key: &RateKey) -> String {
        format!("{}rate:{}:{}", self.prefix, key.provider, key.subject)
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
            let mut connection = self.connection.clone();
            let answer: Value = self
                .script
                .key(self.redis_key(key))
                .arg(expected.map(StoredRate::encode).unwrap_or_default())
                .arg(new.encode())
                .arg(ttl_ms.max(1))
                .invoke_async(&mut connection)
                .await
                .map_err(backend)?;
            swap(answer)
        })
    }
}
