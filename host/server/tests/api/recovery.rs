//! Starts: a purchase interrupted by a crash is finished at the next start, credited once, and
//! its idempotency key then replays the final answer; a second process is refused the embedded
//! database the first serves.

use leaky_server::Application;
use leaky_store::purchases::{self, Claim};
use serde_json::Value;
use uuid::Uuid;

use crate::helpers::test_settings;

#[tokio::test]
async fn an_interrupted_purchase_is_resumed_at_start_and_credited_once() {
    let data = tempfile::tempdir().unwrap();
    let settings = test_settings(data.path());
    // The previous process: a user, a purchase whose payment was captured, then a crash.
    let (user, purchase) = {
        let db = leaky_store::Database::open(&settings.database_url()).await.unwrap();
        let user = leaky_store::users::create(db.pool(), "buyer", "buyer@example.com", "x", &["user"]).await.unwrap();
        assert_eq!(purchases::claim(db.pool(), user.id, "key-1", "hash").await.unwrap(), Claim::New);
        let purchase = Uuid::now_v7();
        purchases::create(db.pool(), purchase, user.id, "openai", 700).await.unwrap();
        purchases::attach(db.pool(), user.id, "key-1", purchase).await.unwrap();
        purchases::capture_payment(db.pool(), purchase, 700).await.unwrap();
        // A key that never started a purchase is released for the client's retry.
        assert_eq!(purchases::claim(db.pool(), user.id, "key-2", "hash").await.unwrap(), Claim::New);
        (user, purchase)
    };

    let app = Application::build(settings).await.unwrap();
    let pool = app.state().db.pool().clone();
    let done = purchases::get(&pool, purchase).await.unwrap().unwrap();
    assert_eq!(done.status, "COMPLETED");
    let steps: Vec<_> = done.steps.iter().map(|s| (s.step.as_str(), s.status.as_str())).collect();
    assert_eq!(steps, [("capture_payment", "DONE"), ("credit_quota", "DONE"), ("complete", "DONE")]);
    let quota = leaky_store::quotas::get(&app.state().db, leaky_store::quotas::OwnerType::User, user.id, "openai")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(quota.limit, 100_000 + 700);
    match purchases::claim(&pool, user.id, "key-1", "hash").await.unwrap() {
        Claim::Replay { status, body } => {
            assert_eq!(status, 201);
            let body: Value = serde_json::from_str(&body).unwrap();
            assert_eq!(body["purchaseId"], purchase.to_string());
        }
        other => panic!("expected a replay, got {other:?}"),
    }
    assert_eq!(purchases::claim(&pool, user.id, "key-2", "hash").await.unwrap(), Claim::New, "released");

    // Running the saga again changes nothing.
    app.state().sagas.run(purchase).await.unwrap();
    let credits: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM ledger WHERE kind = 'purchase'").fetch_one(&pool).await.unwrap();
    assert_eq!(credits, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_saga_resumed_by_several_processes_at_once_credits_once_and_refunds_nothing() {
    let data = tempfile::tempdir().unwrap();
    let app = Application::build(test_settings(data.path())).await.unwrap();
    let pool = app.state().db.pool().clone();
    let user = leaky_store::users::create(&pool, "racer", "racer@example.com", "x", &["user"]).await.unwrap();
    let purchase = Uuid::now_v7();
    purchases::create(&pool, purchase, user.id, "openai", 300).await.unwrap();
    purchases::capture_payment(&pool, purchase, 300).await.unwrap();

    // As replicas starting together would: each resumes the same pending saga.
    let runs: Vec<_> = (0..8)
        .map(|_| {
            let sagas = std::sync::Arc::clone(&app.state().sagas);
            tokio::spawn(async move { sagas.run(purchase).await })
        })
        .collect();
    for run in runs {
        run.await.unwrap().unwrap();
    }
    let done = purchases::get(&pool, purchase).await.unwrap().unwrap();
    assert_eq!(done.status, "COMPLETED", "{:?}", done.steps);
    let refunded: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM payments WHERE status = 'REFUNDED'").fetch_one(&pool).await.unwrap();
    assert_eq!(refunded, 0, "a credited purchase is never refunded");
    let credits: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM ledger WHERE kind = 'purchase'").fetch_one(&pool).await.unwrap();
    assert_eq!(credits, 1);
}

#[tokio::test]
async fn a_second_process_on_the_same_embedded_database_is_refused() {
    let data = tempfile::tempdir().unwrap();
    let first = Application::build(test_settings(data.path())).await.unwrap();
    let refused = Application::build(test_settings(data.path())).await.err().expect("refused while the first runs");
    let message = format!("{refused:#}");
    assert!(message.contains("another process serves the database"), "{message}");
    assert!(message.contains("leaky.db-writer.lock"), "the message names the lock: {message}");
    drop(first);
    // Once the first is gone (as when its process ends), the next one starts.
    Application::build(test_settings(data.path())).await.expect("starts after the first stopped");
}
