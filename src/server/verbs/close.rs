//! CLOSE: the subscription goes, and its query, if still running, is cancelled at once.
//! Nothing is sent back (NIP-01 has no answer to a CLOSE).

use super::Effect;
use crate::proto::SubId;

pub fn decide(sub_id: SubId) -> Vec<Effect> {
    vec![Effect::Unsubscribe(sub_id)]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::verbs::tests::sub;

    #[test]
    fn a_close_unsubscribes_and_answers_nothing() {
        assert_eq!(decide(sub("x")), vec![Effect::Unsubscribe(sub("x"))]);
    }
}
