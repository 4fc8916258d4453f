"""A XEP-0060 publish-subscribe engine, independent of sessions and routing.

- `node`: the node configuration model (§16.4.4), configuration forms, publish-options
  (§7.1.5) and a node's in-memory state;
- `access`: access models (§4.5) as pure functions over who is asking;
- `errors`: the XEP-0060 error conditions as exceptions;
- `engine`: `PubSubService`, the use cases (§6 .. §8) over a `storage.pubsub.PubSubStore`;
- `requests`: reading the parts of a <pubsub/> request;
- `frontend`: results and request parts both front ends build and read.

Two front ends drive it: PEP (`modules/pep.py`, XEP-0163) for every account and the
pubsub service (`modules/pubsub.py`) on `[pubsub] domain`; `frontend` holds what they share.
"""

from dovecote.services.pubsub.access import Asker
from dovecote.services.pubsub.engine import Outcome, PubSubService
from dovecote.services.pubsub.errors import PubSubError, to_stanza_error
from dovecote.services.pubsub.node import Node, NodePolicy

__all__ = [
    "Asker",
    "Node",
    "NodePolicy",
    "Outcome",
    "PubSubError",
    "PubSubService",
    "to_stanza_error",
]
