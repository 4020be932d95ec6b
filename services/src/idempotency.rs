//! `request_id` idempotency for mutating calls: the first result of a request id is stored in the
//! same transaction as the change, and a retry — on this replica or another — gets that result
//! back instead of a second change.

use prost::Message;

use crate::context::CallContext;
use crate::error::Error;
use crate::store::{WriteTx, now_micros};

/// Validates a request id: empty (no idempotency) or a UUID.
pub fn validate(request_id: &str) -> Result<(), Error> {
    if request_id.is_empty() || uuid::Uuid::parse_str(request_id).is_ok() {
        Ok(())
    } else {
        Err(Error::invalid_argument("request_id", "must be a UUID"))
    }
}

/// The stored result of an earlier call with this request id, if any.
pub async fn lookup<M: Message + Default>(
    tx: &mut WriteTx,
    ctx: &CallContext,
    request_id: &str,
) -> Result<Option<M>, Error> {
    if request_id.is_empty() {
        return Ok(None);
    }
    let row: Option<(String, String, Vec<u8>)> = sqlx::query_as(
        "SELECT method, principal, response FROM idempotency_keys WHERE scope = $1 AND request_id = $2",
    )
    .bind(ctx.chain())
    .bind(request_id)
    .fetch_optional(&mut **tx)
    .await?;
    match row {
        None => Ok(None),
        Some((method, principal, _)) if method != ctx.method || principal != ctx.principal => Err(
            Error::invalid_argument("request_id", "was already used for a different request"),
        ),
        Some((_, _, bytes)) => M::decode(bytes.as_slice())
            .map(Some)
            .map_err(|e| Error::internal(format!("stored idempotent response: {e}"))),
    }
}

/// Stores the result of this call under its request id (inside the call's transaction).
pub async fn remember<M: Message>(
    tx: &mut WriteTx,
    ctx: &CallContext,
    request_id: &str,
    response: &M,
) -> Result<(), Error> {
    if request_id.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO idempotency_keys (scope, request_id, method, principal, response, create_time_us) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(ctx.chain())
    .bind(request_id)
    .bind(&ctx.method)
    .bind(&ctx.principal)
    .bind(response.encode_to_vec())
    .bind(now_micros())
    .execute(&mut **tx)
    .await?;
    Ok(())
}
