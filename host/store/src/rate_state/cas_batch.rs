//! Compare-and-sets to Redis gathered into one script call, as the group commit gathers debits.
//!
//! Every consume writes its rate state back with a compare-and-set. Sent one by one, each costs
//! Redis a script invocation (parse, Lua call, reply) and this process a command encoded,
//! written and parsed back. A task of its own instead takes whatever compare-and-sets have
//! queued while the previous call was out (up to [`MOST`]) and sends them as one call of a
//! script that runs the same compare-and-set on each key in turn, and answers each caller
//! with its key's answer. The answers are exactly those of one call per key in the same order:
//! a key twice in one call is compared the second time with what the first wrote.
//!
//! The keys of one call may lie anywhere: the script is for a single Redis node (or a primary
//! with replicas), not Redis Cluster, which wants every key of one script in one hash slot.

use redis::aio::ConnectionManager;
use redis::{Script, Value};
use tokio::sync::{mpsc, oneshot};

use super::RateStateError;

/// For each key `KEYS[i]`, with `ARGV[3i-2]` the expected state, `ARGV[3i-1]` the new one and
/// `ARGV[3i]` its expiry in ms: sets the key to the new state when it holds the expected one (an
/// empty expected state means "absent"). Answers one entry per key: the integer 1 where it
/// wrote, else what the key holds (empty: absent).
const COMPARE_AND_SET_EACH: &str = r"
local answers = {}
for i, key in ipairs(KEYS) do
  local expected = ARGV[3 * i - 2]
  local current = redis.call('GET', key)
  if (current == false and expected == '') or current == expected then
    redis.call('SET', key, ARGV[3 * i - 1], 'PX', ARGV[3 * i])
    answers[i] = 1
  else
    answers[i] = current or ''
  end
end
return answers
";

/// Most compare-and-sets in one call.
const MOST: usize = 512;
/// Compare-and-sets queued before callers wait.
const QUEUE: usize = 65_536;

/// One compare-and-set waiting for its call.
struct Pending {
    key: String,
    expected: String,
    new: String,
    ttl_ms: u64,
    answer: oneshot::Sender<Result<Value, RateStateError>>,
}

/// Hands compare-and-sets to the task that calls Redis.
pub(super) struct CasBatcher {
    queue: mpsc::Sender<Pending>,
}

impl CasBatcher {
    /// Starts the calling task on `connection`.
    pub(super) fn start(connection: ConnectionManager) -> Self {
        let (queue, receiver) = mpsc::channel(QUEUE);
        tokio::spawn(run(connection, receiver));
        Self { queue }
    }

    /// Sets `key` to `new` (expiring in `ttl_ms`) where it holds `expected` (empty: absent);
    /// answers as the one-key script does.
    pub(super) async fn compare_and_set(
        &self,
        key: String,
        expected: String,
        new: String,
        ttl_ms: u64,
    ) -> Result<Value, RateStateError> {
        let (answer, answered) = oneshot::channel();
        let pending = Pending { key, expected, new, ttl_ms, answer };
        self.queue.send(pending).await.map_err(|_| gone())?;
        answered.await.map_err(|_| gone())?
    }
}

fn gone() -> RateStateError {
    RateStateError::Backend("the Redis caller stopped".into())
}

/// Calls Redis with whatever has queued, one call at a time, until every sender is gone.
async fn run(mut connection: ConnectionManager, mut receiver: mpsc::Receiver<Pending>) {
    let script = Script::new(COMPARE_AND_SET_EACH);
    let mut batch = Vec::with_capacity(MOST);
    while receiver.recv_many(&mut batch, MOST).await > 0 {
        // A caller that gave up (its request ended) needs no answer, nor a write.
        batch.retain(|pending| !pending.answer.is_closed());
        if batch.is_empty() {
            continue;
        }
        let mut call = script.prepare_invoke();
        for pending in &batch {
            call.key(&pending.key);
        }
        for pending in &batch {
            call.arg(&pending.expected).arg(&pending.new).arg(pending.ttl_ms.max(1));
        }
        let answers: Result<Vec<Value>, _> = call.invoke_async(&mut connection).await;
        metrics::histogram!("leaky_rate_state_batch_size").record(batch.len() as f64);
        match answers {
            Ok(answers) if answers.len() == batch.len() => {
                for (pending, answer) in batch.drain(..).zip(answers) {
                    let _ = pending.answer.send(Ok(answer));
                }
            }
            Ok(answers) => {
                let err = format!("the script answered {} of {} compare-and-sets", answers.len(), batch.len());
                for pending in batch.drain(..) {
                    let _ = pending.answer.send(Err(RateStateError::Corrupt(err.clone())));
                }
            }
            Err(err) => {
                for pending in batch.drain(..) {
                    let _ = pending.answer.send(Err(RateStateError::Backend(err.to_string())));
                }
            }
        }
    }
}
