//! MySQL and MariaDB steps with mysql_async: the text protocol without parameters
//! (several statements allowed), prepared statements with them.
//!
//! The text protocol sends every value as a string: each is typed here by its
//! column's type, so integers are ints, `FLOAT`/`DOUBLE` floats, `DECIMAL` as in
//! [`super::decimal`], `JSON` decoded, `BIT` an int, dates and times their text, and
//! other values text (`0x` hex when not UTF-8). `BOOLEAN` is `TINYINT(1)` in MySQL:
//! it comes back as 0 or 1.

use std::net::SocketAddr;

use mysql_async::consts::{ColumnFlags, ColumnType};
use mysql_async::prelude::{Protocol, Queryable};
use mysql_async::{Column, Conn, OptsBuilder, Params, QueryResult, Row, Value as My};
use serde_json::Value;

use super::decimal::{decimal, float, float32};
use super::{ClientError, Credentials, Operation, SqlArg};

pub(super) async fn run(
    addr: SocketAddr,
    credentials: &Credentials,
    op: &Operation,
) -> Result<String, ClientError> {
    let mut conn = login(addr, credentials).await?;
    let result = match op {
        Operation::Query { sql, args } if args.is_empty() => {
            rows(conn.query_iter(sql.as_str()).await.map_err(error)?).await
        }
        Operation::Query { sql, args } => {
            rows(
                conn.exec_iter(sql.as_str(), params(args))
                    .await
                    .map_err(error)?,
            )
            .await
        }
        Operation::Exec { sql, args } if args.is_empty() => {
            affected(conn.query_iter(sql.as_str()).await.map_err(error)?).await
        }
        Operation::Exec { sql, args } => {
            affected(
                conn.exec_iter(sql.as_str(), params(args))
                    .await
                    .map_err(error)?,
            )
            .await
        }
        other => Err(ClientError::Unsupported {
            protocol: "mysql".into(),
            operation: other.name(),
        }),
    };
    // A clean COM_QUIT; the server logs an aborted connection otherwise.
    let _ = conn.disconnect().await;
    result
}

pub(super) async fn ping(addr: SocketAddr, credentials: &Credentials) -> Result<(), ClientError> {
    let mut conn = login(addr, credentials).await?;
    let result = conn.ping().await.map_err(error);
    let _ = conn.disconnect().await;
    result
}

async fn login(addr: SocketAddr, credentials: &Credentials) -> Result<Conn, ClientError> {
    let opts = OptsBuilder::default()
        .ip_or_hostname(addr.ip().to_string())
        .tcp_port(addr.port())
        .user(Some(credentials.user.as_deref().unwrap_or("root")))
        .pass(credentials.password.as_deref())
        .db_name(credentials.database.as_deref())
        // Never switch to the server's socket file: that would bypass the relay (and
        // a socket path seen from here may be another server's).
        .prefer_socket(false)
        // Given, so the driver does not ask with a query of its own that rules
        // (query="SELECT*") would see.
        .max_allowed_packet(Some(64 << 20))
        .wait_timeout(Some(28_800))
        .stmt_cache_size(0);
    Conn::new(opts).await.map_err(error)
}

/// The server's error as `code (SQLSTATE): message`, as the mysql client prints it.
fn error(e: mysql_async::Error) -> ClientError {
    match e {
        mysql_async::Error::Server(s) => {
            ClientError::Server(format!("{} ({}): {}", s.code, s.state, s.message))
        }
        other => ClientError::Driver(other.to_string()),
    }
}

fn params(args: &[SqlArg]) -> Params {
    Params::Positional(
        args.iter()
            .map(|a| match a {
                SqlArg::Null => My::NULL,
                SqlArg::Bool(b) => My::Int(i64::from(*b)),
                SqlArg::Int(i) => My::Int(*i),
                SqlArg::Float(f) => My::Double(*f),
                SqlArg::Text(t) => My::Bytes(t.clone().into_bytes()),
            })
            .collect(),
    )
}

/// The rows of the first result set that has columns (`SET @x = 1; SELECT @x`
/// gives `@x`'s); the rest are read and dropped.
async fn rows<P: Protocol>(mut r: QueryResult<'_, '_, P>) -> Result<String, ClientError> {
    while r.columns().is_some_and(|c| c.is_empty()) && !r.is_empty() {
        let _: Vec<Row> = r.collect().await.map_err(error)?;
    }
    let columns: Vec<Column> = r.columns().map(|c| c.to_vec()).unwrap_or_default();
    let found: Vec<Row> = r.collect().await.map_err(error)?;
    r.drop_result().await.map_err(error)?;
    let names: Vec<String> = columns.iter().map(|c| c.name_str().into_owned()).collect();
    let out: Vec<Vec<Value>> = found
        .into_iter()
        .map(|row| {
            row.unwrap()
                .into_iter()
                .zip(&columns)
                .map(|(v, c)| value(c, v))
                .collect()
        })
        .collect();
    Ok(super::rows_json(&names, &out))
}

/// Rows affected, summed over the statements. A statement's count is read while
/// its result is the pending one: reading on moves to the next statement's.
async fn affected<P: Protocol>(mut r: QueryResult<'_, '_, P>) -> Result<String, ClientError> {
    let mut n = 0;
    loop {
        match r.columns() {
            None => break,
            Some(c) if c.is_empty() => n += r.affected_rows(),
            Some(_) => {}
        }
        if r.is_empty() {
            break;
        }
        let _: Vec<Row> = r.collect().await.map_err(error)?;
    }
    r.drop_result().await.map_err(error)?;
    Ok(super::rows_affected(n))
}

/// One value of column `c` as JSON.
fn value(c: &Column, v: My) -> Value {
    match v {
        My::NULL => Value::Null,
        My::Int(i) => Value::from(i),
        My::UInt(u) => Value::from(u),
        My::Float(f) => float32(f),
        My::Double(d) => float(d),
        My::Date(y, mo, d, h, mi, s, us) => {
            let day = format!("{y:04}-{mo:02}-{d:02}");
            if c.column_type() == ColumnType::MYSQL_TYPE_DATE {
                Value::String(day)
            } else {
                Value::String(format!("{day} {}", clock(u32::from(h), mi, s, us)))
            }
        }
        My::Time(neg, days, h, mi, s, us) => Value::String(format!(
            "{}{}",
            if neg { "-" } else { "" },
            clock(days * 24 + u32::from(h), mi, s, us)
        )),
        My::Bytes(b) => text(c, b),
    }
}

/// A text-protocol value, typed by its column.
fn text(c: &Column, b: Vec<u8>) -> Value {
    use ColumnType::*;
    let s = std::str::from_utf8(&b).ok();
    let typed = match (c.column_type(), s) {
        (MYSQL_TYPE_TINY | MYSQL_TYPE_SHORT | MYSQL_TYPE_LONG | MYSQL_TYPE_INT24, Some(s))
        | (MYSQL_TYPE_LONGLONG | MYSQL_TYPE_YEAR, Some(s)) => {
            if c.flags().contains(ColumnFlags::UNSIGNED_FLAG) {
                s.parse::<u64>().ok().map(Value::from)
            } else {
                s.parse::<i64>().ok().map(Value::from)
            }
        }
        (MYSQL_TYPE_FLOAT, Some(s)) => s.parse::<f32>().ok().map(float32),
        (MYSQL_TYPE_DOUBLE, Some(s)) => s.parse::<f64>().ok().map(float),
        (MYSQL_TYPE_DECIMAL | MYSQL_TYPE_NEWDECIMAL, Some(s)) => Some(decimal(s)),
        (MYSQL_TYPE_JSON, Some(s)) => serde_json::from_str(s).ok(),
        (MYSQL_TYPE_BIT, _) if b.len() <= 8 => Some(Value::from(
            b.iter().fold(0u64, |acc, x| (acc << 8) | u64::from(*x)),
        )),
        _ => None,
    };
    typed.unwrap_or_else(|| super::text_or_hex(&b, "0x"))
}

/// `HH:MM:SS`, with microseconds when there are any.
fn clock(h: u32, m: u8, s: u8, us: u32) -> String {
    if us == 0 {
        format!("{h:02}:{m:02}:{s:02}")
    } else {
        format!("{h:02}:{m:02}:{s:02}.{us:06}")
    }
}
