//! Splitting a multi-row statement (or a long `IN` list) into consecutive statements that stay
//! within each backend's limits on bind parameters and on bytes per statement.

use sea_orm::{DbBackend, EntityTrait, Iterable};

/// How many bind parameters one statement may carry: PostgreSQL and MySQL count them in a
/// 16-bit field (65 535); SQLite's default `SQLITE_MAX_VARIABLE_NUMBER` is 32 766.
pub(crate) fn max_bind_params(backend: DbBackend) -> usize {
    match backend {
        DbBackend::Sqlite => 32_766,
        _ => 65_535,
    }
}

/// How many bytes of values one multi-row statement should carry at most. MariaDB refuses
/// packets over `max_allowed_packet` (16 MiB by default, 4 MiB on older MySQL); staying well
/// under it costs a few more statements for very large payloads only.
pub(crate) const MAX_STATEMENT_BYTES: usize = 2 * 1024 * 1024;

/// How many bytes of values one multi-row statement carries at most on `backend`.
///
/// sqlx 0.9.0 does not set `TCP_NODELAY` on its sockets. A message the kernel sends as more
/// than one TCP segment then holds back its last, partial segment until the server acknowledges
/// the first (Nagle), and the server delays that acknowledgement by about 40 ms: one statement
/// of 500 records took 45–55 ms over TCP against 2–5 ms over a Unix socket. Statements that fit
/// one segment go out at once:
///
/// - PostgreSQL: sqlx writes a message to the socket in pieces of about 16 KiB, each its own
///   segment, so 12 KiB of values (plus the per-value framing) stays in one piece.
/// - MySQL/MariaDB: sqlx writes a message whole; one segment on the loopback interface is
///   64 KiB, so 48 KiB of values.
/// - SQLite has no socket: [`MAX_STATEMENT_BYTES`].
///
/// The extra statements cost a round trip each (well under a millisecond on a local server).
/// Over a real network a segment is about 1.4 KiB, which no useful statement fits: there the
/// stall is only avoided by `TCP_NODELAY` (a sqlx release that sets it), see the README.
pub(crate) fn max_statement_bytes(backend: DbBackend) -> usize {
    match backend {
        DbBackend::Postgres => 12 * 1024,
        DbBackend::MySql => 48 * 1024,
        _ => MAX_STATEMENT_BYTES,
    }
}

/// Bind parameters a chunked statement keeps for what is not in its chunk: the `SET` values and
/// other conditions of an `UPDATE … WHERE id IN (chunk)`, say.
const RESERVED_BINDS: usize = 64;

/// Splits `items` into consecutive chunks that each stay within `max_bind_params(backend)`
/// parameters (`binds` per item, the columns of a row or the ids of an `IN` list, less
/// [`RESERVED_BINDS`] for the rest of the statement) and, except for a single oversized item,
/// within [`max_statement_bytes`] as measured by `size`. The one way both stores split a
/// statement.
pub(crate) fn chunks<T>(
    backend: DbBackend,
    binds: usize,
    items: &[T],
    size: impl Fn(&T) -> usize,
) -> Vec<&[T]> {
    let max_rows = ((max_bind_params(backend) - RESERVED_BINDS) / binds.max(1)).max(1);
    let max_bytes = max_statement_bytes(backend);
    let mut out = Vec::new();
    let mut start = 0;
    let mut bytes = 0;
    for (i, item) in items.iter().enumerate() {
        let item_bytes = size(item);
        let rows = i - start;
        if rows > 0 && (rows >= max_rows || bytes + item_bytes > max_bytes) {
            out.push(&items[start..i]);
            start = i;
            bytes = 0;
        }
        bytes += item_bytes;
    }
    if start < items.len() {
        out.push(&items[start..]);
    }
    out
}

/// How many columns entity `E` has: the bind parameters one row of a whole-row insert takes,
/// derived from the entity so that a new column can never push a statement over the limit.
pub(crate) fn column_count<E: EntityTrait>() -> usize {
    E::Column::iter().count()
}
