//! Short labels for replicas where room is tight (the matrix's headers): the part of each
//! name that tells it from the others. Pod names share their deployment and replica-set
//! hash (`checkout-api-768976868d-vprdj`), so a cut-off start reads the same for every
//! pod; what differs is at the end, or before a suffix they share (`.svc.cluster.local`).

use std::collections::HashMap;

/// Where names are cut into words: the separators of pod names, host names and DNS.
const SEPARATORS: &[char] = &['-', '.', '_'];
/// A label shorter than this takes the word before it too: `web-0`, not a bare `0`.
const MIN_CHARS: usize = 3;
/// How much of an instance id stands for a replica whose name tells nothing apart (as
/// elsewhere on the page: `…` and the id's last characters).
const ID_CHARS: usize = 6;

/// A name cut into words, of which the first `len` count (the others are a suffix every
/// name shares).
struct Words<'a> {
    name: &'a str,
    /// Byte offset where each word starts; separators are one byte.
    starts: Vec<usize>,
    len: usize,
}

impl<'a> Words<'a> {
    fn of(name: &'a str) -> Words<'a> {
        let mut starts = vec![0];
        starts.extend(
            name.char_indices()
                .filter(|(_, c)| SEPARATORS.contains(c))
                .map(|(i, _)| i + 1),
        );
        let len = starts.len();
        Words { name, starts, len }
    }

    /// Word `i` of all of them, without its separator.
    fn word(&self, i: usize) -> &'a str {
        let end = self
            .starts
            .get(i + 1)
            .map_or(self.name.len(), |next| next - 1);
        &self.name[self.starts[i]..end]
    }

    /// The counted words' last `k` (all of them when there are fewer), as written.
    fn tail(&self, k: usize) -> &'a str {
        let end = self
            .starts
            .get(self.len)
            .map_or(self.name.len(), |next| next - 1);
        &self.name[self.starts[self.len - k.min(self.len)]..end]
    }
}

/// How many last words every name shares, leaving each at least one word of its own.
fn common_suffix(all: &[Words]) -> usize {
    let shortest = all.iter().map(|w| w.starts.len()).min().unwrap_or(0);
    (0..shortest.saturating_sub(1))
        .take_while(|&back| {
            let last = |w: &Words| w.word(w.starts.len() - 1 - back).to_string();
            all.iter().all(|w| last(w) == last(&all[0]))
        })
        .count()
}

/// How many names end with each run of `k` last words, for every `k` up to the most
/// words a name has: `counts[k - 1][tail]`. Built once, so that labelling N names costs
/// N times their words, not N² (the page labels every member on each render).
fn tail_counts<'a>(all: &[Words<'a>]) -> Vec<HashMap<&'a str, usize>> {
    let most = all.iter().map(|w| w.len).max().unwrap_or(0);
    (1..=most)
        .map(|k| {
            let mut counts = HashMap::new();
            for words in all {
                *counts.entry(words.tail(k)).or_insert(0) += 1;
            }
            counts
        })
        .collect()
}

/// The fewest last words of `words` that no other name ends with, lengthened to
/// [`MIN_CHARS`] where it has the words; none when another name is the same.
fn shortest_unique<'a>(words: &Words<'a>, counts: &[HashMap<&'a str, usize>]) -> Option<&'a str> {
    // Past its own words a name is whole, and may still differ from a longer one's tail.
    let unique = |k: usize| {
        let label = words.tail(k);
        !label.is_empty() && counts[k - 1].get(label) == Some(&1)
    };
    let k = (1..=counts.len()).find(|&k| unique(k))?;
    let k = (k..=words.len)
        .find(|&k| words.tail(k).chars().count() >= MIN_CHARS)
        .unwrap_or(words.len);
    Some(words.tail(k))
}

/// The last characters of an id (ids from peers need not be ASCII).
fn id_tail(id: &str) -> String {
    let skip = id.chars().count().saturating_sub(ID_CHARS);
    format!("…{}", id.chars().skip(skip).collect::<String>())
}

/// One label per `(name, instance_id)`, in order, all different: the shortest run of last
/// words (after any suffix all names share) that no other name ends with. Replicas whose
/// names are the same are told apart by their instance ids instead.
pub fn short_labels(members: &[(&str, &str)]) -> Vec<String> {
    let mut all: Vec<Words> = members.iter().map(|(name, _)| Words::of(name)).collect();
    // A single name shares nothing with anyone: only its own last word is shown.
    if all.len() > 1 {
        let shared = common_suffix(&all);
        for words in &mut all {
            words.len -= shared;
        }
    }
    let counts = tail_counts(&all);
    let labels: Vec<Option<&str>> = all.iter().map(|w| shortest_unique(w, &counts)).collect();
    let mut out: Vec<String> = labels
        .iter()
        .zip(members)
        .map(|(label, (_, id))| label.map_or_else(|| id_tail(id), str::to_string))
        .collect();
    // Ids are unique where their tails may not be (or a name may read like one).
    let mut uses: HashMap<&str, usize> = HashMap::new();
    for label in &out {
        *uses.entry(label.as_str()).or_insert(0) += 1;
    }
    let clashing: Vec<usize> = (0..out.len())
        .filter(|&i| labels[i].is_none() && uses.get(out[i].as_str()) > Some(&1))
        .collect();
    for i in clashing {
        out[i] = members[i].1.to_string();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(names: &[&str]) -> Vec<String> {
        let ids: Vec<String> = (0..names.len()).map(|i| format!("01JID{i:06}")).collect();
        let members: Vec<(&str, &str)> = names
            .iter()
            .zip(&ids)
            .map(|(n, id)| (*n, id.as_str()))
            .collect();
        short_labels(&members)
    }

    #[test]
    fn pods_of_one_replica_set_are_told_by_their_own_hash() {
        assert_eq!(
            labels(&[
                "checkout-api-768976868d-vprdj",
                "checkout-api-768976868d-x7k2p",
                "checkout-api-768976868d-gtxdh",
            ]),
            ["vprdj", "x7k2p", "gtxdh"]
        );
    }

    #[test]
    fn pods_of_two_replica_sets_too() {
        // The same random suffix by chance: the replica sets' hashes tell them apart.
        assert_eq!(
            labels(&[
                "checkout-api-768976868d-vprdj",
                "checkout-api-5c9f7d6b4-vprdj"
            ]),
            ["768976868d", "5c9f7d6b4"]
        );
        assert_eq!(
            labels(&[
                "checkout-api-768976868d-vprdj",
                "checkout-api-5c9f7d6b4-abcde"
            ]),
            ["vprdj", "abcde"]
        );
    }

    #[test]
    fn a_shared_suffix_is_left_out() {
        assert_eq!(
            labels(&["alpha.svc.cluster.local", "beta.svc.cluster.local"]),
            ["alpha", "beta"]
        );
        assert_eq!(
            labels(&["us-east-web-1-prod", "us-west-web-1-prod"]),
            ["east", "west"]
        );
    }

    #[test]
    fn short_words_take_the_word_before() {
        assert_eq!(
            labels(&["web-0", "web-1", "web-2"]),
            ["web-0", "web-1", "web-2"]
        );
        assert_eq!(labels(&["r2", "r3"]), ["r2", "r3"]);
    }

    #[test]
    fn names_of_different_lengths() {
        assert_eq!(labels(&["api", "api-canary-x1"]), ["api", "canary-x1"]);
        // One name is all of the other's suffix: each keeps a word of its own.
        assert_eq!(labels(&["svc.local", "a.svc.local"]), ["svc", "a.svc"]);
        assert_eq!(labels(&["b", "a-b"]), ["b", "a-b"]);
    }

    #[test]
    fn a_single_member_shows_its_last_word() {
        assert_eq!(labels(&["checkout-api-768976868d-vprdj"]), ["vprdj"]);
        assert_eq!(labels(&["rollcall"]), ["rollcall"]);
        assert_eq!(labels(&[]), Vec::<String>::new());
    }

    #[test]
    fn same_names_fall_back_to_instance_ids() {
        assert_eq!(
            labels(&["web", "web", "api"]),
            ["…000000", "…000001", "api"]
        );
        // Ids whose tails are the same: the whole id.
        let members = [("web", "01JAAA-123456"), ("web", "01JBBB-123456")];
        assert_eq!(short_labels(&members), ["01JAAA-123456", "01JBBB-123456"]);
        // Nothing in a name at all.
        assert_eq!(labels(&["", "x"]), ["…000000", "x"]);
    }

    #[test]
    fn names_are_cut_on_characters() {
        assert_eq!(labels(&["día-ñandú", "día-über"]), ["ñandú", "über"]);
    }

    #[test]
    fn labels_are_always_distinct() {
        let names = [
            "a-b-c", "b-c", "c", "x-b-c", "a-b", "a.b", "a_b", "-", "--", "a-", "", "a",
        ];
        let got = labels(&names);
        let distinct: std::collections::HashSet<&String> = got.iter().collect();
        assert_eq!(distinct.len(), names.len(), "{got:?}");
    }
}
