//! `request_id` idempotency for mutating calls: the first result of a request id is stored in the
//! same transaction as the change, and a retry — on this replica or another — gets that result
//! back instead of a second change.

use std::collections::HashMap;

use prost::Message;

use crate::context::CallContext;
use crate::error::Error;
use crate::store::{WriteTx, now_micros, values_placeholders};

/// Validates a request id: empty (no idempotency) or a UUID.
pub fn validate(request_id: &str) -> Result<(), Error> {
    if request_id.is_empty() || uuid::Uuid::parse_str(request_id).is_ok() {
        Ok(())
    } else {
        Err(Error::invalid_argument("request_id", "must be a UUID"))
    }
}

/// A result stored under a request id: the call that stored it and its encoded response.
#[derive(Debug, Clone)]
pub struct Stored {
    method: String,
    principal: String,
    response: Vec<u8>,
}

impl Stored {
    /// The stored response, for a retry of the same call by the same principal; a request id
    /// reused for another method or by another principal is refused.
    pub fn answer<M: Message + Default>(&self, ctx: &CallContext) -> Result<M, Error> {
        if self.method != ctx.method || self.principal != ctx.principal {
            return Err(Error::invalid_argument(
                "request_id",
                "was already used for a different request",
            ));
        }
        M::decode(self.response.as_slice())
            .map_err(|e| Error::internal(format!("stored idempotent response: {e}")))
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
    lookup_many(tx, ctx.chain(), &[request_id])
        .await?
        .get(request_id)
        .map(|stored| stored.answer(ctx))
        .transpose()
}

/// The stored results of any of `request_ids` in `scope` (a context's `chain()`), by request id.
pub async fn lookup_many(
    tx: &mut WriteTx,
    scope: &str,
    request_ids: &[&str],
) -> Result<HashMap<String, Stored>, Error> {
    let mut found = HashMap::new();
    // One parameter is the scope.
    for chunk in request_ids.chunks(crate::store::MAX_BIND_PARAMETERS - 1) {
        let sql = format!(
            "SELECT request_id, method, principal, response FROM idempotency_keys \
             WHERE scope = $1 AND request_id IN ({})",
            crate::store::placeholder_list(2, chunk.len())
        );
        let mut query = sqlx::query_as::<_, (String, String, String, Vec<u8>)>(&sql).bind(scope);
        for id in chunk {
            query = query.bind(*id);
        }
        for (request_id, method, principal, response) in query.fetch_all(&mut **tx).await? {
            found.insert(
                request_id,
                Stored {
                    method,
                    principal,
                    response,
                },
            );
        }
    }
    Ok(found)
}

/// Stores the result of this call under its request id (inside the call's transaction).
pub async fn remember<M: Message>(
    tx: &mut WriteTx,
    ctx: &CallContext,
    request_id: &str,
    response: &M,
) -> Result<(), Error> {
    remember_many(tx, &[(ctx, request_id, response)]).await
}

/// Stores the results of several calls under their request ids (inside their shared
/// transaction); entries without a request id are skipped.
pub async fn remember_many<M: Message>(
    tx: &mut WriteTx,
    entries: &[(&CallContext, &str, &M)],
) -> Result<(), Error> {
    const COLUMNS: usize = 6;
    let entries: Vec<_> = entries.iter().filter(|(_, id, _)| !id.is_empty()).collect();
    let now = now_micros();
    for chunk in entries.chunks(crate::store::MAX_BIND_PARAMETERS / COLUMNS) {
        let sql = format!(
            "INSERT INTO idempotency_keys (scope, request_id, method, principal, response, create_time_us) \
             VALUES {}",
            values_placeholders(chunk.len(), COLUMNS)
        );
        let mut insert = sqlx::query(&sql);
        for (ctx, request_id, response) in chunk {
            insert = insert
                .bind(ctx.chain().to_owned())
                .bind(request_id.to_string())
                .bind(ctx.method.clone())
                .bind(ctx.principal.clone())
                .bind(response.encode_to_vec())
                .bind(now);
        }
        insert.execute(&mut **tx).await?;
    }
    Ok(())
}
