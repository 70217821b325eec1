//! One client connection from accept to close: the handshake under its
//! timeout, then the transmission phase. Everything that goes wrong here
//! is logged with the connection's id and peer and ends this connection
//! only.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::execute::ReplyMode;
use crate::framing::InBuf;
use crate::handshake::{negotiate, Exports};
use crate::pool::BufPool;
use crate::request::Limits;
use crate::socket::Socket;
use crate::transmission::{self, End, Session};

pub(crate) struct ConnCtx {
    pub id: u64,
    pub peer: String,
    pub exports: Exports,
    pub handshake_timeout: Duration,
    pub stop: watch::Receiver<bool>,
}

/// `e` and its sources, joined with ": ".
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

pub(crate) async fn handle<S: Socket>(mut sock: S, ctx: ConnCtx) {
    let ConnCtx {
        id,
        peer,
        exports,
        handshake_timeout,
        mut stop,
    } = ctx;
    let mut inb = InBuf::new();
    let outcome = tokio::select! {
        biased;
        _ = stop.wait_for(|s| *s) => {
            tracing::debug!(conn = id, peer = %peer, "closed during the handshake: server shutting down");
            return;
        }
        r = tokio::time::timeout(handshake_timeout, negotiate(&mut inb, &mut sock, &exports)) => r,
    };
    let neg = match outcome {
        Err(_) => {
            tracing::info!(conn = id, peer = %peer, "handshake not finished after {handshake_timeout:?}: closing");
            return;
        }
        Ok(Err(e)) => {
            tracing::info!(conn = id, peer = %peer, "handshake failed: {}", error_chain(&e));
            return;
        }
        Ok(Ok(None)) => {
            tracing::debug!(conn = id, peer = %peer, "client left during the handshake");
            return;
        }
        Ok(Ok(Some(n))) => n,
    };
    let config = &exports.0[neg.export];
    let session = Arc::new(Session {
        conn_id: id,
        peer,
        export_name: config.name.clone(),
        export: config.export.clone(),
        limits: Limits {
            size: config.export.size(),
            read_only: config.export.read_only(),
            structured: neg.structured,
            base_allocation: neg.base_allocation,
        },
        mode: ReplyMode {
            structured: neg.structured,
        },
        pool: BufPool::new(),
    });
    tracing::info!(
        conn = id,
        peer = %session.peer,
        export = %session.export_name,
        structured = neg.structured,
        block_status = neg.base_allocation,
        flags = format_args!("{:#x}", neg.flags),
        "client connected"
    );
    let end = transmission::serve(sock, inb, session.clone(), stop).await;
    let peer = &session.peer;
    let export = &session.export_name;
    match end {
        End::Io(_) | End::WriteFailed(_) | End::Protocol(_) => {
            tracing::warn!(conn = id, peer = %peer, export = %export, "connection closed: {end}")
        }
        _ => tracing::info!(conn = id, peer = %peer, export = %export, "connection closed: {end}"),
    }
}
