//! The `task_messages` table: the byte messages SP1 tasks send each other (e.g. the core
//! executor streaming shard descriptions to the controller), read in sequence order.

use anyhow::Result;

use super::Db;

impl Db {
    pub async fn send_message(&self, task_id: &str, payload: &[u8]) -> Result<()> {
        let n = sqlx::query("INSERT INTO task_messages (task_id, proof_id, payload) SELECT id, proof_id, $2 FROM tasks WHERE id = $1")
            .bind(task_id)
            .bind(payload)
            .execute(&self.pool)
            .await?
            .rows_affected();
        anyhow::ensure!(n == 1, "no task {task_id} to send a message on");
        Ok(())
    }

    pub async fn messages_after(&self, task_id: &str, after: i64) -> Result<Vec<(i64, Vec<u8>)>> {
        Ok(sqlx::query_as("SELECT seq, payload FROM task_messages WHERE task_id = $1 AND seq > $2 ORDER BY seq")
            .bind(task_id)
            .bind(after)
            .fetch_all(&self.pool)
            .await?)
    }
}
