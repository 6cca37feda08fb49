//! Events through Kafka: with `kafka.brokers` set, the outbox relay publishes to the broker and
//! the analytics consumer group fills the report.
//!
//! The broker is `LEAKY_TEST_KAFKA_BROKERS` (default `127.0.0.1:9092`; `cargo xtask test` starts
//! one when nothing answers). Without one this test fails, unless `LEAKY_TEST_KAFKA=absent`
//! declares it absent; then it says it skipped.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::spawn_app_with;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_and_purchases_reach_the_report_through_kafka() {
    if std::env::var("LEAKY_TEST_KAFKA").is_ok_and(|v| v == "absent") {
        eprintln!("SKIPPED: LEAKY_TEST_KAFKA=absent declares the Kafka broker absent");
        return;
    }
    let brokers = std::env::var("LEAKY_TEST_KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into());
    let app = spawn_app_with(move |s| {
        s.kafka.brokers = Some(brokers);
        s.kafka.topic_prefix = format!("t{}.", Uuid::new_v4().simple());
        s.kafka.group_id = format!("g{}", Uuid::new_v4().simple());
    })
    .await;
    let status: Value = app.get("/api/v1/tokens/status", None).await.json().await.unwrap();
    assert_eq!(status["storage"]["eventBus"], "kafka");
    let user = app.user().await;
    for _ in 0..5 {
        assert_eq!(app.consume(&user, "openai", 3).await.status(), 200);
    }
    let r = app
        .client
        .post(app.url("/api/v1/tokens/purchase"))
        .bearer_auth(&user.token)
        .header("Idempotency-Key", "k1")
        .json(&json!({ "userId": user.id, "provider": "openai", "tokens": 100 }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);

    let url = format!(
        "/api/v1/analytics/report?userId={}&from=2000-01-01T00:00:00Z&to=2100-01-01T00:00:00Z&granularity=day",
        user.id
    );
    // Usage and purchases travel on topics of their own, so either may arrive first.
    let started = Instant::now();
    loop {
        let report: Value = app.get(&url, Some(&user.token)).await.json().await.unwrap();
        let purchased: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM analytics_events WHERE outcome = 'purchased' AND user_id = ?")
                .bind(user.id.to_string())
                .fetch_one(&app.pool)
                .await
                .unwrap();
        if report["totals"]["requests"] == 5 && report["totals"]["tokens"] == 15 && purchased == 1 {
            break;
        }
        assert!(purchased <= 1, "the purchase event was counted {purchased} times");
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the report never showed the usage and the purchase: {report}, {purchased} purchase events"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("usage reached the report through Kafka in {:?}", started.elapsed());
}
