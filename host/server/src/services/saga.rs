//! The purchase saga: `capture_payment` -> `credit_quota` -> `complete`, compensated by
//! `refund_payment` when the credit cannot be made.
//!
//! Each step writes its effect and its record in one transaction, so the saga can be resumed
//! from its records after a crash (pending purchases are resumed at start-up) without doing
//! any step twice: a purchase is never paid or credited twice.

use std::sync::Arc;

use leaky_store::Pool;
use leaky_store::purchases::{self, Purchase};
use uuid::Uuid;

use crate::error::ApiError;
use crate::services::accounts::{Accounts, lock};

/// Runs purchase sagas.
pub struct Sagas {
    pool: Pool,
    accounts: Arc<Accounts>,
}

impl Sagas {
    /// Sagas over the database and the book.
    pub fn new(pool: Pool, accounts: Arc<Accounts>) -> Self {
        Self { pool, accounts }
    }

    /// Starts a purchase for the idempotency key `(caller, key)` and runs its saga to the end;
    /// returns the answer (status and body), also stored under the key.
    pub async fn purchase(
        &self,
        caller: Uuid,
        key: &str,
        user: Uuid,
        provider: &str,
        tokens: i64,
    ) -> Result<(u16, serde_json::Value), ApiError> {
        let id = Uuid::now_v7();
        purchases::create(&self.pool, id, user, provider, tokens).await?;
        purchases::attach(&self.pool, caller, key, id).await?;
        let done = self.run(id).await?;
        let (status, body) = self.answer(&done).await?;
        purchases::finish(&self.pool, caller, key, status, &body.to_string()).await?;
        Ok((status, body))
    }

    /// The API's answer for a finished purchase.
    async fn answer(&self, done: &Purchase) -> Result<(u16, serde_json::Value), ApiError> {
        let account = self.accounts.account(done.user_id, &done.provider).await?;
        let (limit, remaining) = {
            let acct = lock(&account);
            (acct.quota.limit, acct.quota.remaining())
        };
        let status = if done.status == "COMPLETED" { 201 } else { 422 };
        let body = serde_json::json!({
            "purchaseId": done.purchase_id,
            "status": done.status,
            "userId": done.user_id,
            "provider": done.provider,
            "tokens": done.tokens,
            "quota": { "limit": limit, "remaining": remaining },
        });
        Ok((status, body))
    }

    /// Runs (or resumes) the saga of a purchase from its recorded steps.
    pub async fn run(&self, id: Uuid) -> Result<Purchase, ApiError> {
        let purchase = purchases::get(&self.pool, id).await?.ok_or(ApiError::NotFound("purchase"))?;
        if purchase.status != "PENDING" {
            return Ok(purchase);
        }
        if purchases::step_status(&self.pool, id, "capture_payment").await?.is_none() {
            purchases::capture_payment(&self.pool, id, purchase.tokens).await?;
        }
        if purchases::step_status(&self.pool, id, "credit_quota").await?.is_none()
            && let Err(err) = self.credit(&purchase).await
            // Another replica resuming the same saga may have credited it meanwhile (its
            // transaction won); then the credit stands and there is nothing to refund.
            && purchases::step_status(&self.pool, id, "credit_quota").await?.is_none()
        {
            tracing::warn!(purchase = %id, error = %err, "credit failed; refunding the payment");
            purchases::refund_payment(&self.pool, id, "the quota could not be credited; payment refunded").await?;
            purchases::finish_saga(&self.pool, id, "FAILED", "compensated").await?;
            metrics::counter!("leaky_purchases_total", "status" => "failed").increment(1);
            return purchases::get(&self.pool, id).await?.ok_or(ApiError::NotFound("purchase"));
        }
        purchases::finish_saga(&self.pool, id, "COMPLETED", "tokens credited").await?;
        metrics::counter!("leaky_purchases_total", "status" => "completed").increment(1);
        purchases::get(&self.pool, id).await?.ok_or(ApiError::NotFound("purchase"))
    }

    async fn credit(&self, purchase: &Purchase) -> Result<(), ApiError> {
        let facts = self.accounts.user(purchase.user_id).await?.ok_or(ApiError::NotFound("user"))?;
        // Load the account first: the in-memory limit is raised after the durable credit, and an
        // account loaded after the credit would already include it.
        let account = self.accounts.account(purchase.user_id, &purchase.provider).await?;
        let base_limit = lock(&account).quota.limit;
        purchases::credit_quota(&self.pool, purchase, facts.org_id, base_limit).await?;
        lock(&account).quota.limit += purchase.tokens;
        Ok(())
    }

    /// Resumes every saga a previous process left unfinished, then settles the idempotency
    /// keys it left running: a key that started a purchase gets that purchase's answer; a key
    /// that started nothing is released so the client's retry goes through.
    pub async fn resume_pending(&self) -> Result<usize, ApiError> {
        let pending = purchases::pending(&self.pool).await?;
        for id in &pending {
            let done = self.run(*id).await?;
            tracing::info!(purchase = %id, status = %done.status, "resumed an unfinished purchase saga");
        }
        for (caller, key, purchase) in purchases::running_keys(&self.pool).await? {
            match purchase {
                Some(id) => {
                    let done = purchases::get(&self.pool, id).await?.ok_or(ApiError::NotFound("purchase"))?;
                    let (status, body) = self.answer(&done).await?;
                    purchases::finish(&self.pool, caller, &key, status, &body.to_string()).await?;
                }
                None => purchases::release(&self.pool, caller, &key).await?,
            }
        }
        Ok(pending.len())
    }
}
