//! Tokens spent on the LLM, per call and per thread.

use tandem_model::{ModelUsage, ThreadId, ThreadUsage, UsageRecord};

use crate::backend::{job, on_conn, on_pool};
use crate::{Store, StoreError};

impl Store {
    /// Records one model call, once per step of its run: recording the
    /// same `(run_id, step_seq)` again (a step repeated after a crash)
    /// changes nothing. Says whether this call recorded it.
    pub async fn record_usage(&self, usage: UsageRecord) -> Result<bool, StoreError> {
        self.write(job(move |mut tx| {
            let usage = usage.clone();
            Box::pin(async move {
                let now = tx.now();
                let inserted = on_conn!(&mut tx, c => sqlx::query(
                    "INSERT INTO llm_usage
                         (run_id, step_seq, thread_id, purpose, model,
                          prompt_tokens, completion_tokens, created_at)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                     ON CONFLICT (run_id, step_seq) DO NOTHING",
                )
                .bind(usage.run_id)
                .bind(usage.step_seq)
                .bind(usage.thread_id)
                .bind(&usage.purpose)
                .bind(&usage.model)
                .bind(i64::from(usage.prompt_tokens))
                .bind(i64::from(usage.completion_tokens))
                .bind(now)
                .execute(c)
                .await
                .map(|r| r.rows_affected()))?;
                Ok(inserted == 1)
            })
        }))
        .await
    }

    /// What a thread has cost in tokens, in all and per model and purpose
    /// (zero for a thread with no recorded calls, or no such thread).
    pub async fn thread_usage(&self, thread_id: ThreadId) -> Result<ThreadUsage, StoreError> {
        // PostgreSQL sums BIGINTs to NUMERIC: cast back.
        let by_model = on_pool!(self, p => sqlx::query_as::<_, ModelUsage>(
            "SELECT model, purpose,
                    CAST(SUM(prompt_tokens) AS BIGINT) AS prompt_tokens,
                    CAST(SUM(completion_tokens) AS BIGINT) AS completion_tokens,
                    COUNT(*) AS calls
             FROM llm_usage WHERE thread_id = $1
             GROUP BY model, purpose
             ORDER BY model, purpose",
        )
        .bind(thread_id)
        .fetch_all(p)
        .await)?;
        let prompt_tokens = by_model.iter().map(|m| m.prompt_tokens).sum();
        let completion_tokens = by_model.iter().map(|m| m.completion_tokens).sum();
        Ok(ThreadUsage {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens + completion_tokens,
            by_model,
        })
    }
}
