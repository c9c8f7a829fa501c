//! What every protocol's conversation shares: the latch that keeps an opaque
//! connection opaque, the ledger of requests awaiting responses, and small parsing
//! helpers.

use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};

use crate::{Answer, Conversation, Fields, Interest, Message, Opaque, Reply, Request, MAX_MESSAGE};

/// A protocol's conversation logic; [`Latched`] turns it into a [`Conversation`].
/// The methods with defaults mean what [`Conversation`]'s do.
pub(crate) trait Framer: Send {
    fn client(&mut self, bytes: &[u8]) -> Result<Vec<Request>, Opaque>;
    fn server(&mut self, bytes: &[u8]) -> Result<usize, Opaque>;
    fn answer(&mut self, request: &Request, answer: &Answer) -> Result<Reply, String>;

    fn interest(&mut self, interest: Option<&Interest>) {
        let _ = interest;
    }
    fn frames_server(&self) -> bool {
        false
    }
    fn server_messages(&mut self, bytes: &[u8]) -> Result<Vec<Message>, Opaque> {
        let _ = bytes;
        Err(Opaque(
            "this protocol does not frame the server's messages".into(),
        ))
    }
    fn drop_request(&mut self, request: &Request) -> Option<Reply> {
        let _ = request;
        None
    }
    fn duplicate_request(&mut self, request: &Request, bytes: &[u8]) -> Result<Vec<u8>, String> {
        let _ = request;
        Ok([bytes, bytes].concat())
    }
    fn drop_message(&mut self, message: &Message, bytes: &[u8]) -> Result<Vec<u8>, String> {
        let _ = (message, bytes);
        Ok(Vec::new())
    }
    fn duplicate_message(&mut self, message: &Message, bytes: &[u8]) -> Result<Vec<u8>, String> {
        let _ = message;
        Ok([bytes, bytes].concat())
    }
    fn answer_message(
        &mut self,
        message: &Message,
        bytes: &[u8],
        answer: &Answer,
    ) -> Result<Vec<u8>, String> {
        let _ = (message, bytes, answer);
        Err("this protocol cannot answer a message from the server".into())
    }
}

/// Once a direction goes opaque, the whole connection is: every later call returns
/// the same [`Opaque`] without looking at the bytes, and nothing is answered.
pub(crate) struct Latched<F> {
    framer: F,
    opaque: Option<Opaque>,
}

impl<F: Framer> Latched<F> {
    pub(crate) fn boxed(framer: F) -> Box<dyn Conversation>
    where
        F: 'static,
    {
        Box::new(Latched {
            framer,
            opaque: None,
        })
    }

    fn latch<T>(&mut self, result: Result<T, Opaque>) -> Result<T, Opaque> {
        if let Err(e) = &result {
            self.opaque = Some(e.clone());
        }
        result
    }
}

impl<F: Framer> Conversation for Latched<F> {
    fn client(&mut self, bytes: &[u8]) -> Result<Vec<Request>, Opaque> {
        if let Some(o) = &self.opaque {
            return Err(o.clone());
        }
        let r = self.framer.client(bytes);
        self.latch(r)
    }

    fn server(&mut self, bytes: &[u8]) -> Result<usize, Opaque> {
        if let Some(o) = &self.opaque {
            return Err(o.clone());
        }
        let r = self.framer.server(bytes);
        self.latch(r)
    }

    fn answer(&mut self, request: &Request, answer: &Answer) -> Result<Reply, String> {
        if let Some(o) = &self.opaque {
            return Err(format!("the connection is relayed unchanged: {o}"));
        }
        if !request.matchable {
            return Err("this message is not a request rules may act on".into());
        }
        self.framer.answer(request, answer)
    }

    fn interest(&mut self, interest: Option<&Interest>) {
        self.framer.interest(interest);
    }

    fn frames_server(&self) -> bool {
        self.framer.frames_server()
    }

    fn server_messages(&mut self, bytes: &[u8]) -> Result<Vec<Message>, Opaque> {
        if let Some(o) = &self.opaque {
            return Err(o.clone());
        }
        let r = self.framer.server_messages(bytes);
        self.latch(r)
    }

    fn drop_request(&mut self, request: &Request) -> Option<Reply> {
        if self.opaque.is_some() || !request.matchable {
            return None;
        }
        self.framer.drop_request(request)
    }

    fn duplicate_request(&mut self, request: &Request, bytes: &[u8]) -> Result<Vec<u8>, String> {
        if let Some(o) = &self.opaque {
            return Err(format!("the connection is relayed unchanged: {o}"));
        }
        self.framer.duplicate_request(request, bytes)
    }

    fn drop_message(&mut self, message: &Message, bytes: &[u8]) -> Result<Vec<u8>, String> {
        self.usable(message)?;
        self.framer.drop_message(message, bytes)
    }

    fn duplicate_message(&mut self, message: &Message, bytes: &[u8]) -> Result<Vec<u8>, String> {
        self.usable(message)?;
        self.framer.duplicate_message(message, bytes)
    }

    fn answer_message(
        &mut self,
        message: &Message,
        bytes: &[u8],
        answer: &Answer,
    ) -> Result<Vec<u8>, String> {
        self.usable(message)?;
        self.framer.answer_message(message, bytes, answer)
    }
}

impl<F> Latched<F> {
    /// Whether a rule may act on server message `message`.
    fn usable(&self, message: &Message) -> Result<(), String> {
        if let Some(o) = &self.opaque {
            return Err(format!("the connection is relayed unchanged: {o}"));
        }
        if !message.matchable {
            return Err("this message is not one rules may act on".into());
        }
        Ok(())
    }
}

/// Most requests a connection may have awaiting responses before it is relayed
/// unchanged: bounds a conversation's memory when a client pipelines without end
/// and the server never answers.
pub const MAX_PENDING: usize = 1 << 16;

/// Requests sent (or about to be) that still await responses, oldest first, each
/// with what the server side needs to know to read its response.
///
/// A request handed to `answer()` is not forwarded, so the server never responds
/// to it: [`Ledger::answered`] finds it (by content: the API gives requests no id;
/// equal requests are interchangeable here because they carry the same kind) and
/// takes it out of the count. The relay calls `answer()` for a request before it
/// forwards any later one, so the entry is still here.
pub(crate) struct Ledger<K> {
    entries: VecDeque<Entry<K>>,
}

pub(crate) struct Entry<K> {
    id: u64,
    /// Responses still expected.
    pub(crate) replies: usize,
    /// Answered in the server's place: the server owes it nothing.
    pub(crate) answered: bool,
    pub(crate) kind: K,
}

/// A fast, non-keyed hasher for [`request_id`]: ids are compared only among one
/// connection's pending requests, and computing one is paid on every request.
struct Fx(u64);

impl Fx {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

impl Hasher for Fx {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            self.add(u64::from_le_bytes(c.try_into().expect("eight bytes")));
        }
        let tail = chunks.remainder();
        if !tail.is_empty() {
            let mut word = [0u8; 8];
            word[..tail.len()].copy_from_slice(tail);
            // The length keeps "a" and "a\0" apart.
            self.add(u64::from_le_bytes(word) ^ ((tail.len() as u64) << 59));
        }
    }

    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }

    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

pub(crate) fn request_id(request: &Request) -> u64 {
    let mut h = Fx(0);
    request.len.hash(&mut h);
    request.fields.hash(&mut h);
    request.matchable.hash(&mut h);
    request.replies.hash(&mut h);
    h.finish()
}

impl<K> Default for Ledger<K> {
    fn default() -> Self {
        Ledger {
            entries: VecDeque::new(),
        }
    }
}

impl<K> Ledger<K> {
    /// Records `request` if it expects responses.
    pub(crate) fn push(&mut self, request: &Request, kind: K) -> Result<(), Opaque> {
        if request.replies == 0 {
            return Ok(());
        }
        self.push_always(request, kind)
    }

    /// Records `request` even if it expects no counted response (a memcached quiet
    /// command, whose output, if any, must still be read as its own).
    pub(crate) fn push_always(&mut self, request: &Request, kind: K) -> Result<(), Opaque> {
        if self.entries.len() >= MAX_PENDING {
            return Err(Opaque(format!(
                "more than {MAX_PENDING} requests await responses"
            )));
        }
        self.entries.push_back(Entry {
            id: request_id(request),
            replies: request.replies,
            answered: false,
            kind,
        });
        Ok(())
    }

    /// `request` is answered in the server's place: the server will not respond to
    /// it. Returns its entry (kept until it reaches the front) so the caller can
    /// read or adjust its kind.
    pub(crate) fn answered(&mut self, request: &Request) -> Option<&mut Entry<K>> {
        let id = request_id(request);
        let e = self
            .entries
            .iter_mut()
            .find(|e| e.id == id && !e.answered)?;
        e.answered = true;
        Some(e)
    }

    /// The entry [`Ledger::answered`] would pick for `request`, left as it is.
    pub(crate) fn find(&self, request: &Request) -> Option<&Entry<K>> {
        let id = request_id(request);
        self.entries.iter().find(|e| e.id == id && !e.answered)
    }

    /// The oldest request the server still owes something, if any.
    pub(crate) fn front(&mut self) -> Option<&mut K> {
        self.drop_answered();
        self.entries.front_mut().map(|e| &mut e.kind)
    }

    /// One response to the oldest request is complete; returns its kind when that
    /// was its last.
    pub(crate) fn complete(&mut self) -> Option<K> {
        self.drop_answered();
        let e = self.entries.front_mut()?;
        e.replies = e.replies.saturating_sub(1);
        if e.replies == 0 {
            self.entries.pop_front().map(|e| e.kind)
        } else {
            None
        }
    }

    /// Removes the oldest request the server still owes something.
    pub(crate) fn pop(&mut self) -> Option<K> {
        self.drop_answered();
        self.entries.pop_front().map(|e| e.kind)
    }

    /// The entries before the one [`Ledger::answered`] would pick for `request`
    /// (all of them if none), answered ones included, oldest first.
    pub(crate) fn preceding(&self, request: &Request) -> impl Iterator<Item = &Entry<K>> {
        let id = request_id(request);
        self.entries
            .iter()
            .take_while(move |e| e.answered || e.id != id)
    }

    fn drop_answered(&mut self) {
        while self.entries.front().is_some_and(|e| e.answered) {
            self.entries.pop_front();
        }
    }
}

/// A request spanning `len` bytes.
pub(crate) fn request(len: usize, fields: Fields, matchable: bool, replies: usize) -> Request {
    Request {
        len,
        fields,
        matchable,
        replies,
    }
}

/// Fields from pairs.
pub(crate) fn fields<const N: usize>(pairs: [(&'static str, String); N]) -> Fields {
    // Inserted one by one: collecting would sort them in a vector first.
    let mut f = Fields::new();
    for (k, v) in pairs {
        f.insert(k, v);
    }
    f
}

/// A message that would make a conversation hold more than [`MAX_MESSAGE`] bytes.
pub(crate) fn too_large(what: &str) -> Opaque {
    Opaque(format!("{what} larger than {MAX_MESSAGE} bytes"))
}

/// Finds the end of a line (`\n`) in `buf`, starting the search at `*scanned` and
/// remembering how far it looked, so feeding a long line byte by byte stays linear.
/// Returns the index just past the `\n`.
pub(crate) fn find_line(buf: &[u8], scanned: &mut usize) -> Option<usize> {
    let start = (*scanned).min(buf.len());
    // memchr: every relayed message of a text protocol pays this scan.
    match memchr::memchr(b'\n', &buf[start..]) {
        Some(i) => {
            *scanned = 0;
            Some(start + i + 1)
        }
        None => {
            *scanned = buf.len();
            None
        }
    }
}

/// A line without its `\r\n` or `\n`.
pub(crate) fn trim_eol(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// One direction's bytes not yet accounted for. Consuming moves an offset and the
/// buffer is compacted once per chunk, so a chunk of many small messages costs
/// linear time; skipping (a body the conversation does not need to read) discards
/// bytes as they arrive, so large bodies are never held.
#[derive(Default)]
pub(crate) struct Inbox {
    buf: Vec<u8>,
    start: usize,
    skip: usize,
    /// Bytes consumed or skipped since the last [`Inbox::take`]: the length of the
    /// request being completed.
    held: usize,
}

impl Inbox {
    /// Appends a chunk (compacting what earlier chunks consumed, and discarding what
    /// a pending skip covers).
    pub(crate) fn extend(&mut self, bytes: &[u8]) {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        let n = self.skip.min(bytes.len());
        self.skip -= n;
        self.buf.extend_from_slice(&bytes[n..]);
    }

    /// The bytes not yet consumed (empty while a skip is pending).
    pub(crate) fn data(&self) -> &[u8] {
        if self.skip > 0 {
            &[]
        } else {
            &self.buf[self.start..]
        }
    }

    /// Consumes the first `n` unconsumed bytes.
    pub(crate) fn consume(&mut self, n: usize) {
        self.start += n;
        self.held += n;
    }

    /// Consumes the next `n` bytes, those not yet received included.
    pub(crate) fn skip(&mut self, n: usize) {
        let avail = self.buf.len() - self.start;
        self.held = self.held.saturating_add(n);
        if n <= avail {
            self.start += n;
        } else {
            self.start = self.buf.len();
            self.skip = n - avail;
        }
    }

    /// Whether bytes still have to arrive before parsing resumes.
    pub(crate) fn skipping(&self) -> bool {
        self.skip > 0
    }

    /// Bytes consumed since the last call; resets the count.
    pub(crate) fn take(&mut self) -> usize {
        std::mem::take(&mut self.held)
    }

    /// Bytes consumed since the last [`Inbox::take`], plus those skipped ahead.
    pub(crate) fn held(&self) -> usize {
        self.held
    }
}

/// What a connection remembers by name (prepared statements, portals) and their
/// query text, bounded to [`MAX_MESSAGE`] bytes of text in total: past that, some
/// old entries are forgotten (a request naming one then has no `query`).
pub(crate) struct Names<K> {
    map: HashMap<K, String>,
    bytes: usize,
}

impl<K> Default for Names<K> {
    fn default() -> Self {
        Names {
            map: HashMap::new(),
            bytes: 0,
        }
    }
}

/// The bytes a key costs.
pub(crate) trait Weight {
    fn weight(&self) -> usize;
}

impl Weight for String {
    fn weight(&self) -> usize {
        self.len() + 24
    }
}

impl Weight for u32 {
    fn weight(&self) -> usize {
        4
    }
}

impl<K: Eq + Hash + Clone + Weight> Names<K> {
    pub(crate) fn insert(&mut self, name: K, query: String) {
        self.remove(&name);
        self.bytes += name.weight() + query.len();
        self.map.insert(name, query);
        while self.bytes > MAX_MESSAGE {
            let Some(k) = self.map.keys().next().cloned() else {
                break;
            };
            self.remove(&k);
        }
    }

    pub(crate) fn remove(&mut self, name: &K) {
        if let Some(q) = self.map.remove(name) {
            self.bytes -= name.weight() + q.len();
        }
    }

    pub(crate) fn get(&self, name: &K) -> Option<&String> {
        self.map.get(name)
    }
}
