//! The compact parts of an [`Event`](crate::world::Event). A trace repeats a handful of
//! names (services, kinds, event types, field and clock keys) hundreds of thousands
//! of times, and an event holds a few fields and clock entries: as `String`s and
//! `BTreeMap`s (whose first node has room for 11 entries) each event cost a dozen
//! allocations and about a kilobyte, most of it empty map capacity. A [`Name`] is
//! shared instead of copied, and a [`SmallMap`] is a sorted vector sized to its
//! entries. Both serialize exactly as `String` and `BTreeMap<String, _>` did.

use std::borrow::Borrow;
use std::collections::BTreeMap;
use std::fmt;
use std::ops::{Deref, Index};
use std::sync::Arc;

/// A name that many events share: cloning it copies a pointer, not the text.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Name(Arc<str>);

impl Name {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for Name {
    fn default() -> Self {
        Name::from("")
    }
}

impl Deref for Name {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for Name {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for Name {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl From<&str> for Name {
    fn from(s: &str) -> Self {
        Name(s.into())
    }
}

impl From<String> for Name {
    fn from(s: String) -> Self {
        Name(s.into())
    }
}

impl From<&String> for Name {
    fn from(s: &String) -> Self {
        Name(s.as_str().into())
    }
}

impl From<Arc<str>> for Name {
    fn from(s: Arc<str>) -> Self {
        Name(s)
    }
}

impl From<Name> for String {
    fn from(n: Name) -> Self {
        n.0.to_string()
    }
}

impl PartialEq<str> for Name {
    fn eq(&self, other: &str) -> bool {
        *self.0 == *other
    }
}

impl PartialEq<&str> for Name {
    fn eq(&self, other: &&str) -> bool {
        *self.0 == **other
    }
}

impl PartialEq<String> for Name {
    fn eq(&self, other: &String) -> bool {
        *self.0 == **other
    }
}

impl PartialEq<Name> for str {
    fn eq(&self, other: &Name) -> bool {
        *self == *other.0
    }
}

impl PartialEq<Name> for &str {
    fn eq(&self, other: &Name) -> bool {
        **self == *other.0
    }
}

impl PartialEq<Name> for String {
    fn eq(&self, other: &Name) -> bool {
        **self == *other.0
    }
}

impl serde::Serialize for Name {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for Name {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Name::from)
    }
}

/// A map from names, kept as a vector sorted by key: what an event's fields and
/// vector clock need (a few entries, read in key order, looked up by name), in one
/// allocation of exactly their size. Reads and iteration behave as `BTreeMap`'s.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct SmallMap<V>(Vec<(Name, V)>);

/// An event's fields.
pub type Fields = SmallMap<String>;
/// An event's vector clock.
pub type Clock = SmallMap<u64>;

impl<V> Default for SmallMap<V> {
    fn default() -> Self {
        SmallMap(Vec::new())
    }
}

impl<V> SmallMap<V> {
    pub fn new() -> Self {
        SmallMap(Vec::new())
    }

    pub fn with_capacity(n: usize) -> Self {
        SmallMap(Vec::with_capacity(n))
    }

    fn find(&self, key: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|(k, _)| k.as_str().cmp(key))
    }

    pub fn get<Q: AsRef<str> + ?Sized>(&self, key: &Q) -> Option<&V> {
        self.find(key.as_ref()).ok().map(|i| &self.0[i].1)
    }

    pub fn get_mut<Q: AsRef<str> + ?Sized>(&mut self, key: &Q) -> Option<&mut V> {
        self.find(key.as_ref()).ok().map(|i| &mut self.0[i].1)
    }

    pub fn contains_key<Q: AsRef<str> + ?Sized>(&self, key: &Q) -> bool {
        self.find(key.as_ref()).is_ok()
    }

    /// Sets `key` to `value`; returns the value it replaced.
    pub fn insert(&mut self, key: Name, value: V) -> Option<V> {
        match self.find(&key) {
            Ok(i) => Some(std::mem::replace(&mut self.0[i].1, value)),
            Err(i) => {
                self.0.insert(i, (key, value));
                None
            }
        }
    }

    pub fn remove<Q: AsRef<str> + ?Sized>(&mut self, key: &Q) -> Option<V> {
        self.find(key.as_ref()).ok().map(|i| self.0.remove(i).1)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Entries in key order.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = (&Name, &V)> + ExactSizeIterator {
        self.0.iter().map(|(k, v)| (k, v))
    }

    pub fn keys(&self) -> impl DoubleEndedIterator<Item = &Name> + ExactSizeIterator {
        self.0.iter().map(|(k, _)| k)
    }

    pub fn values(&self) -> impl DoubleEndedIterator<Item = &V> + ExactSizeIterator {
        self.0.iter().map(|(_, v)| v)
    }

    /// Entries that are already in strictly increasing key order, as a decoder that
    /// trusts nobody checks: `None` if they are not.
    pub fn from_sorted(entries: Vec<(Name, V)>) -> Option<Self> {
        entries
            .windows(2)
            .all(|w| w[0].0 < w[1].0)
            .then_some(SmallMap(entries))
    }
}

impl<V, K: Into<Name>> FromIterator<(K, V)> for SmallMap<V> {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        SmallMap::from_vec(iter.into_iter().map(|(k, v)| (k.into(), v)).collect())
    }
}

impl<V> SmallMap<V> {
    /// Entries in any order, as `BTreeMap` would take them one after the other: of
    /// repeated keys, the last value wins.
    pub fn from_vec(mut v: Vec<(Name, V)>) -> Self {
        if !v.windows(2).all(|w| w[0].0 < w[1].0) {
            // Stable: equal keys stay in insertion order, and the last one is kept.
            v.sort_by(|a, b| a.0.cmp(&b.0));
            let mut out: Vec<(Name, V)> = Vec::with_capacity(v.len());
            for (k, val) in v {
                match out.last_mut() {
                    Some(last) if last.0 == k => last.1 = val,
                    _ => out.push((k, val)),
                }
            }
            v = out;
        }
        SmallMap(v)
    }
}

impl<V, K: Into<Name>> Extend<(K, V)> for SmallMap<V> {
    fn extend<I: IntoIterator<Item = (K, V)>>(&mut self, iter: I) {
        for (k, v) in iter {
            self.insert(k.into(), v);
        }
    }
}

impl<V, K: Into<Name>, const N: usize> From<[(K, V); N]> for SmallMap<V> {
    fn from(entries: [(K, V); N]) -> Self {
        entries.into_iter().collect()
    }
}

impl<V> From<BTreeMap<String, V>> for SmallMap<V> {
    fn from(map: BTreeMap<String, V>) -> Self {
        // Already in key order: `String` and `Name` order alike (by bytes).
        SmallMap(map.into_iter().map(|(k, v)| (k.into(), v)).collect())
    }
}

impl<V> From<SmallMap<V>> for BTreeMap<String, V> {
    fn from(map: SmallMap<V>) -> Self {
        map.0.into_iter().map(|(k, v)| (k.into(), v)).collect()
    }
}

impl<V: PartialEq> PartialEq<BTreeMap<String, V>> for SmallMap<V> {
    fn eq(&self, other: &BTreeMap<String, V>) -> bool {
        self.len() == other.len()
            && self
                .iter()
                .zip(other)
                .all(|((a, x), (b, y))| a == b && x == y)
    }
}

impl<V, Q: AsRef<str> + ?Sized> Index<&Q> for SmallMap<V> {
    type Output = V;
    fn index(&self, key: &Q) -> &V {
        self.get(key).expect("no entry found for key")
    }
}

impl<'a, V> IntoIterator for &'a SmallMap<V> {
    type Item = (&'a Name, &'a V);
    type IntoIter =
        std::iter::Map<std::slice::Iter<'a, (Name, V)>, fn(&'a (Name, V)) -> (&'a Name, &'a V)>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter().map(|(k, v)| (k, v))
    }
}

impl<V> IntoIterator for SmallMap<V> {
    type Item = (Name, V);
    type IntoIter = std::vec::IntoIter<(Name, V)>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl<V: fmt::Debug> fmt::Debug for SmallMap<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl<V: serde::Serialize> serde::Serialize for SmallMap<V> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.iter())
    }
}

impl<'de, V: serde::Deserialize<'de>> serde::Deserialize<'de> for SmallMap<V> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        BTreeMap::<String, V>::deserialize(d).map(SmallMap::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Inserts, lookups, removals and iteration agree with `BTreeMap`'s.
        #[test]
        fn behaves_as_a_btreemap(
            ops in proptest::collection::vec((0u8..3, "[a-d]{0,2}", any::<u8>()), 0..60)
        ) {
            let mut ours = SmallMap::new();
            let mut model = BTreeMap::new();
            for (op, k, v) in ops {
                match op {
                    0 => prop_assert_eq!(ours.insert(k.as_str().into(), v), model.insert(k, v)),
                    1 => prop_assert_eq!(ours.remove(&k), model.remove(&k)),
                    _ => {
                        prop_assert_eq!(ours.get(&k), model.get(&k));
                        prop_assert_eq!(ours.contains_key(&k), model.contains_key(&k));
                    }
                }
                prop_assert!(ours == model);
            }
            let collected: SmallMap<u8> = model.clone().into_iter().rev().collect();
            prop_assert!(collected == model);
            prop_assert_eq!(serde_json::to_string(&ours).unwrap(), serde_json::to_string(&model).unwrap());
            prop_assert_eq!(format!("{ours:?}"), format!("{model:?}"));
        }
    }

    #[test]
    fn the_last_of_repeated_keys_wins() {
        let m: SmallMap<u8> = [("b", 1), ("a", 2), ("b", 3)].into();
        assert!(m == BTreeMap::from([("a".to_string(), 2), ("b".to_string(), 3)]));
        assert!(SmallMap::from_sorted(vec![("b".into(), 1), ("a".into(), 2)]).is_none());
        assert!(SmallMap::from_sorted(vec![("a".into(), 1), ("a".into(), 2)]).is_none());
        assert!(SmallMap::from_sorted(vec![("a".into(), 1), ("b".into(), 2)]).is_some());
    }

    #[test]
    fn names_serialize_as_strings() {
        let n = Name::from("stdout");
        assert_eq!(serde_json::to_string(&n).unwrap(), "\"stdout\"");
        let back: Name = serde_json::from_str("\"é\"").unwrap();
        assert_eq!(back, "é");
    }
}
