//! Rate state in Redis: one string per (user, provider), written by a compare-and-set script.

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, Script};

use super::{BoxFuture, RateKey, RateStateError, SharedRateState, StoredRate};

/// Sets `KEYS[1]` to `ARGV[2]` (expiring in `ARGV[3]` ms) when it holds `ARGV[1]`, where an
/// empty `ARGV[1]` means "absent". Answers 1 when it wrote, 0 when another writer was first.
const COMPARE_AND_SET: &str = r"
local current = redis.call('GET', KEYS[1])
if (current == false and ARGV[1] == '') or current == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return 1
end
return 0
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
            let text: Option<String> =
                redis::cmd("GET").arg(self.redis_key(key)).query_async(&mut connection).await.map_err(backend)?;
            text.map(|t| StoredRate::decode(&t).ok_or(RateStateError::Corrupt(t))).transpose()
        })
    }

    fn compare_and_set<'a>(
        &'a self,
        key: &'a RateKey,
        expected: Option<&'a StoredRate>,
        new: &'a StoredRate,
        ttl_ms: u64,
    ) -> BoxFuture<'a, Result<bool, RateStateError>> {
        Box::pin(async move {
            let mut connection = self.connection.clone();
            let written: i64 = self
                .script
                .key(self.redis_key(key))
                .arg(expected.map(StoredRate::encode).unwrap_or_default())
                .arg(new.encode())
                .arg(ttl_ms.max(1))
                .invoke_async(&mut connection)
                .await
                .map_err(backend)?;
            Ok(written == 1)
        })
    }
}
