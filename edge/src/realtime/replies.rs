//! The replies a `/ws/realtime` connection sent to its most recent
//! identified sensor messages (`seq` or `message_id`): a message sent again
//! is answered from here, the same text, and not fed to the detector twice.

use std::collections::{HashMap, VecDeque};

use super::inbound::ResendId;

/// Replies a connection keeps.
pub const RECENT_REPLIES: usize = 256;

/// The last [`RECENT_REPLIES`] replies, by the id of the message each
/// answered; the oldest goes first.
#[derive(Debug, Default)]
pub struct RecentReplies {
    replies: HashMap<ResendId, String>,
    order: VecDeque<ResendId>,
}

impl RecentReplies {
    /// The reply sent to the message with `id`, if it is still kept.
    pub fn get(&self, id: &ResendId) -> Option<&String> {
        self.replies.get(id)
    }

    /// Keeps `reply` as the answer to the message with `id`.
    pub fn insert(&mut self, id: ResendId, reply: String) {
        if self.replies.insert(id.clone(), reply).is_some() {
            return;
        }
        self.order.push_back(id);
        if self.order.len() > RECENT_REPLIES
            && let Some(oldest) = self.order.pop_front()
        {
            self.replies.remove(&oldest);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_most_recent_replies_are_kept_and_the_oldest_forgotten() {
        let mut recent = RecentReplies::default();
        for seq in 0..=RECENT_REPLIES as u64 {
            recent.insert(ResendId::Seq(seq), format!("reply {seq}"));
        }
        assert_eq!(recent.get(&ResendId::Seq(0)), None, "the oldest went");
        assert_eq!(
            recent.get(&ResendId::Seq(1)).map(String::as_str),
            Some("reply 1")
        );
        assert_eq!(
            recent
                .get(&ResendId::Seq(RECENT_REPLIES as u64))
                .map(String::as_str),
            Some("reply 256")
        );
        assert_eq!(recent.get(&ResendId::MessageId("1".into())), None);
        assert_eq!(recent.replies.len(), RECENT_REPLIES);
    }
}
