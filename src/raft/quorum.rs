//! Majority quorums, as functions over plain values: what a quorum of
//! voters has reached. The leader's commit index is the highest match index
//! a quorum stores (figure 8's own-term rule is the caller's), a read round
//! is confirmed once a quorum acknowledged it, an election is won with a
//! quorum of votes.

/// The highest value that at least `quorum` of `values` reach: the
/// `quorum`-th largest. `None` when fewer than `quorum` values are given
/// (or `quorum` is 0, which no configuration has).
pub fn quorum_value<T: Ord + Copy>(mut values: Vec<T>, quorum: usize) -> Option<T> {
    values.sort_unstable_by(|a, b| b.cmp(a));
    quorum.checked_sub(1).and_then(|i| values.get(i).copied())
}

/// Whether `granted` votes are a quorum.
pub fn is_quorum(granted: usize, quorum: usize) -> bool {
    granted >= quorum
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quorum_value_is_the_quorum_th_largest() {
        // (values, quorum, expected)
        let cases: [(&[u64], usize, Option<u64>); 9] = [
            (&[], 1, None),
            (&[5], 1, Some(5)),
            (&[5, 3, 9], 2, Some(5)),
            (&[5, 3, 9], 3, Some(3)),
            (&[5, 3, 9], 1, Some(9)),
            (&[0, 0, 7], 2, Some(0)),
            (&[4, 4, 4, 1, 1], 3, Some(4)),
            (&[4, 4, 1, 1, 1], 3, Some(1)),
            (&[5, 3], 3, None),
        ];
        for (values, quorum, expected) in cases {
            assert_eq!(
                quorum_value(values.to_vec(), quorum),
                expected,
                "{values:?} with a quorum of {quorum}"
            );
        }
        assert_eq!(quorum_value(vec![1u64, 2], 0), None, "no quorum of 0");
    }

    #[test]
    fn is_quorum_counts_votes() {
        for (granted, quorum, expected) in [
            (0, 1, false),
            (1, 1, true),
            (1, 2, false),
            (2, 2, true),
            (3, 2, true),
        ] {
            assert_eq!(
                is_quorum(granted, quorum),
                expected,
                "{granted} of {quorum}"
            );
        }
    }
}
