//! A name for what the daemon does not serve. tonic answers a method or service it has
//! no route for with Unimplemented and an empty message; a client then cannot tell a
//! typo or a CRI version mismatch from a method that minipod has and refuses. This
//! layer adds the path, and the services that are served, to that answer (as grpc-go,
//! and so containerd, does: "unknown service ...").
//!
//! The status of a request body that does not decode stays INTERNAL, as gRPC's status
//! code table, grpc-go and so containerd and CRI-O answer it.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tonic::codegen::http;

/// The services a client can reach.
const SERVED: &str = "runtime.v1.RuntimeService and runtime.v1.ImageService (CRI v1)";

#[derive(Clone, Copy, Debug, Default)]
pub struct NameUnknownMethods;

impl<S> tower::Layer<S> for NameUnknownMethods {
    type Service = Named<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Named(inner)
    }
}

#[derive(Clone, Debug)]
pub struct Named<S>(S);

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for Named<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<ReqBody>) -> Self::Future {
        let path = req.uri().path().to_string();
        let answer = self.0.call(req);
        Box::pin(async move {
            let mut res = answer.await?;
            name_unknown(&path, res.headers_mut());
            Ok(res)
        })
    }
}

/// Adds a message to an Unimplemented answer that has none (no route).
fn name_unknown(path: &str, headers: &mut http::HeaderMap) {
    let unimplemented = headers.get("grpc-status").is_some_and(|s| s == "12");
    let silent = headers.get("grpc-message").is_none_or(|m| m.is_empty());
    if !(unimplemented && silent) {
        return;
    }
    // Printable ASCII but '%' goes into grpc-message as it is; the rest is encoded.
    let shown: String = path
        .chars()
        .take(200)
        .map(|c| if (' '..='~').contains(&c) && c != '%' { c.to_string() } else { format!("%{:02X}", c as u32 & 0xff) })
        .collect();
    let text = format!("unknown method {shown}: minipod serves {SERVED}");
    if let Ok(v) = http::HeaderValue::from_str(&text) {
        headers.insert("grpc-message", v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_silent_unimplemented_gets_a_message() {
        let mut h = http::HeaderMap::new();
        h.insert("grpc-status", http::HeaderValue::from_static("12"));
        name_unknown("/runtime.v1.RuntimeService/Nope", &mut h);
        let m = h.get("grpc-message").and_then(|m| m.to_str().ok()).unwrap_or_default().to_string();
        assert_eq!(m, format!("unknown method /runtime.v1.RuntimeService/Nope: minipod serves {SERVED}"));
        // A method of ours that refuses keeps its own message; other codes are left alone.
        h.insert("grpc-message", http::HeaderValue::from_static("image volumes are not supported"));
        name_unknown("/runtime.v1.RuntimeService/CreateContainer", &mut h);
        assert_eq!(h.get("grpc-message").unwrap(), "image volumes are not supported");
        let mut ok = http::HeaderMap::new();
        ok.insert("grpc-status", http::HeaderValue::from_static("0"));
        name_unknown("/x", &mut ok);
        assert!(ok.get("grpc-message").is_none());
    }
}
