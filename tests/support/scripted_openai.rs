//! A scripted stand-in for an OpenAI-compatible chat server, for tests: an
//! in-process HTTP/1.1 server on 127.0.0.1 that answers each request with
//! the next reply of its script (status, body, delay, headers) and records
//! every request (headers and JSON body). Not a model: it answers what the
//! test scripted, whatever it is asked.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};

/// One scripted reply.
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    pub body: String,
    pub delay: Duration,
    pub headers: Vec<(String, String)>,
}

impl Reply {
    /// A 200 chat-completion answer with `text`, 100 prompt + 7 completion tokens.
    pub fn answer(text: &str) -> Reply {
        let body = json!({
            "id": "chatcmpl-scripted", "object": "chat.completion", "model": "scripted",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 100, "completion_tokens": 7, "total_tokens": 107},
        });
        Reply {
            status: 200,
            body: body.to_string(),
            delay: Duration::ZERO,
            headers: Vec::new(),
        }
    }

    /// A 200 answer whose first token carries `top` log-probabilities.
    pub fn answer_with_logprobs(text: &str, top: &[(&str, f64)]) -> Reply {
        let top: Vec<Value> = top
            .iter()
            .map(|(t, lp)| json!({"token": t, "logprob": lp}))
            .collect();
        let body = json!({
            "id": "chatcmpl-scripted", "object": "chat.completion", "model": "scripted",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "length",
                         "logprobs": {"content": [{"token": text, "logprob": -0.1, "top_logprobs": top}]}}],
            "usage": {"prompt_tokens": 50, "completion_tokens": 1, "total_tokens": 51},
        });
        Reply {
            status: 200,
            body: body.to_string(),
            delay: Duration::ZERO,
            headers: Vec::new(),
        }
    }

    /// An error status with a small JSON error body.
    pub fn status(status: u16) -> Reply {
        Reply {
            status,
            body: json!({"error": {"message": format!("scripted {status}")}}).to_string(),
            delay: Duration::ZERO,
            headers: Vec::new(),
        }
    }

    /// This reply after `delay`.
    pub fn after(mut self, delay: Duration) -> Reply {
        self.delay = delay;
        self
    }

    /// This reply with an extra header.
    pub fn header(mut self, name: &str, value: &str) -> Reply {
        self.headers.push((name.into(), value.into()));
        self
    }
}

/// A request as the server saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Value,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Answers a request body (for [`ScriptedServer::respond`]).
pub type Responder = Arc<dyn Fn(&Value) -> Reply + Send + Sync>;

pub struct ScriptedServer {
    /// Base URL, `http://127.0.0.1:PORT/v1`.
    pub url: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    stop: Arc<AtomicBool>,
    addr: std::net::SocketAddr,
}

impl ScriptedServer {
    /// Starts a server answering with `script` in order; once the script is
    /// used up, every further request gets a 500 "script exhausted".
    pub fn start(script: Vec<Reply>) -> ScriptedServer {
        Self::start_with(script, None)
    }

    /// Starts a server whose every reply is `f(request body)`: still a
    /// script (the test's rule), not a model.
    pub fn respond(f: impl Fn(&Value) -> Reply + Send + Sync + 'static) -> ScriptedServer {
        Self::start_with(Vec::new(), Some(Arc::new(f)))
    }

    fn start_with(script: Vec<Reply>, responder: Option<Responder>) -> ScriptedServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let script = Arc::new(Mutex::new(
            script
                .into_iter()
                .collect::<std::collections::VecDeque<_>>(),
        ));
        let (seen2, stop2) = (seen.clone(), stop.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let (seen, script, responder) = (seen2.clone(), script.clone(), responder.clone());
                std::thread::spawn(move || serve(conn, &seen, &script, responder.as_ref()));
            }
        });
        ScriptedServer {
            url: format!("http://{addr}/v1"),
            seen,
            stop,
            addr,
        }
    }

    /// Every request received so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for ScriptedServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
    }
}

fn serve(
    conn: TcpStream,
    seen: &Mutex<Vec<Seen>>,
    script: &Mutex<std::collections::VecDeque<Reply>>,
    responder: Option<&Responder>,
) {
    let mut reader = BufReader::new(conn.try_clone().expect("clone"));
    let mut line = String::new();
    if reader.read_line(&mut line).unwrap_or(0) == 0 {
        return;
    }
    let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
            break;
        }
        if let Some((k, v)) = h.trim_end().split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    let len = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse::<usize>().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    if reader.read_exact(&mut body).is_err() {
        return;
    }
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let scripted = responder.map(|f| f(&body));
    seen.lock().unwrap().push(Seen {
        path,
        headers,
        body,
    });
    let reply = scripted
        .or_else(|| script.lock().unwrap().pop_front())
        .unwrap_or_else(|| Reply {
            status: 500,
            body: "{\"error\": {\"message\": \"script exhausted\"}}".into(),
            delay: Duration::ZERO,
            headers: Vec::new(),
        });
    std::thread::sleep(reply.delay);
    let mut conn = conn;
    let mut out = format!(
        "HTTP/1.1 {} Scripted\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
        reply.status,
        reply.body.len()
    );
    for (k, v) in &reply.headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str("\r\n");
    out.push_str(&reply.body);
    let _ = conn.write_all(out.as_bytes());
    let _ = conn.flush();
}
