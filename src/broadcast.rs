//! Messages that cross replicas: what each replica delivers to its own `/events` clients,
//! with duplicates dropped by id and the last few kept for newly opened pages.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

/// Longest message text, in bytes.
pub const MAX_TEXT: usize = 1024;
/// Messages a new page is shown.
const HISTORY: usize = 50;
/// Ids remembered to drop duplicates: far more than can be in flight at once.
const SEEN: usize = 4096;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub id: String,
    pub text: String,
    /// The instance it entered by.
    pub origin: String,
    /// Instances that delivered it, in order along its path (origin first).
    pub via: Vec<String>,
    pub at: String,
}

impl Message {
    pub fn new(text: String, origin: &str) -> Message {
        Message {
            id: ulid::Ulid::new().to_string(),
            text,
            origin: origin.to_string(),
            via: vec![origin.to_string()],
            at: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
        }
    }

    /// Rejects what no replica would send: ids are short ASCII tokens.
    pub fn plausible(&self) -> bool {
        let id_like = |s: &str| {
            !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric())
        };
        self.text.len() <= MAX_TEXT
            && id_like(&self.id)
            && id_like(&self.origin)
            && self.via.len() <= 16
            && self.via.iter().all(|v| id_like(v))
            && self.at.len() <= 64
    }
}

/// The message inbox: delivers each message once, keeps the last few, and fans them out
/// to the page's event streams.
#[derive(Clone)]
pub struct Broadcaster {
    me: Arc<str>,
    tx: broadcast::Sender<Message>,
    recent: Arc<Mutex<Recent>>,
}

#[derive(Default)]
struct Recent {
    history: VecDeque<Message>,
    seen: HashSet<String>,
    seen_order: VecDeque<String>,
}

impl Broadcaster {
    pub fn new(me: &str) -> Broadcaster {
        Broadcaster {
            me: me.into(),
            tx: broadcast::channel(256).0,
            recent: Arc::default(),
        }
    }

    /// Delivers a message to this replica's clients once; false for a duplicate.
    pub fn deliver(&self, mut message: Message) -> bool {
        let Ok(mut recent) = self.recent.lock() else {
            return false;
        };
        if !recent.seen.insert(message.id.clone()) {
            return false;
        }
        recent.seen_order.push_back(message.id.clone());
        if recent.seen_order.len() > SEEN
            && let Some(old) = recent.seen_order.pop_front()
        {
            recent.seen.remove(&old);
        }
        if message.via.last().map(String::as_str) != Some(&*self.me) {
            message.via.push(self.me.to_string());
        }
        recent.history.push_back(message.clone());
        if recent.history.len() > HISTORY {
            recent.history.pop_front();
        }
        // No subscriber is fine: nobody is watching.
        let _ = self.tx.send(message);
        true
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Message> {
        self.tx.subscribe()
    }

    pub fn history(&self) -> Vec<Message> {
        self.recent
            .lock()
            .map(|r| r.history.iter().cloned().collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivers_once_keeps_recent_history_and_records_the_path() {
        let b = Broadcaster::new("B");
        let mut rx = b.subscribe();
        let m = Message::new("hello".into(), "A");
        assert!(b.deliver(m.clone()));
        assert!(!b.deliver(m.clone()), "duplicate");
        let got = rx.try_recv().unwrap();
        assert_eq!(got.via, ["A", "B"]);
        assert!(rx.try_recv().is_err());
        for i in 0..100 {
            b.deliver(Message::new(format!("m{i}"), "A"));
        }
        let history = b.history();
        assert_eq!(history.len(), HISTORY);
        assert_eq!(history.last().unwrap().text, "m99");
    }

    #[test]
    fn implausible_messages_are_refused() {
        let mut m = Message::new("x".repeat(MAX_TEXT + 1), "A");
        assert!(!m.plausible());
        m.text = "ok".into();
        assert!(m.plausible());
        m.via = vec!["v".into(); 17];
        assert!(!m.plausible());
        m.via = vec!["01JÉ".into()];
        assert!(!m.plausible(), "ids are ASCII");
    }
}
