"""Flower's own SuperNode pull function, run on a real node state and object store."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from flwr.app import ConfigRecord, Message, RecordDict
from flwr.app.message.message import make_message
from flwr.app.metadata import Metadata
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects, get_object_tree
from flwr.supercore.object_store import ObjectStoreFactory
from flwr.supercore.run import Run
from flwr.supernode import start_client_internal
from flwr.supernode.nodestate import NodeStateFactory

RUN_ID = 7


@dataclass
class Pulled:
    """What one pull left: the node's state and object store, the message, what it returned."""

    state: Any
    store: Any
    message: Message
    returned: int | None


def pull_one_message(
    *,
    pull_object: Callable[[int, str], bytes] | None = None,
    wrap: Callable[[ModuleType], None] | None = None,
) -> Pulled:
    """Flower's own `_pull_and_store_message` (wrapped by `wrap`, as our launcher wraps it)
    receiving one train message of run 7; `pull_object` answers the object pulls (default:
    every object of the message, as the SuperLink serves them)."""
    stores = ObjectStoreFactory()
    store = stores.store()
    state = NodeStateFactory(stores).state()
    state.store_run(Run.create_empty(RUN_ID))
    content = RecordDict({"c": ConfigRecord({"round": 3})})
    metadata = Metadata(RUN_ID, "", 0, 1, "", "3", time.time(), 60.0, "train")
    message = make_message(metadata, content)
    message.metadata.__dict__["_message_id"] = message.object_id  # as Flower's receive does
    tree = get_object_tree(message)
    objects = {oid: obj.deflate() for oid, obj in get_all_nested_objects(message).items()}
    module = ModuleType("supernode_loop")
    flower_pull = start_client_internal._pull_and_store_message
    # Flower's own function, even where an earlier test installed the launcher in this process
    module._pull_and_store_message = getattr(  # type: ignore[attr-defined]
        flower_pull, "__wrapped__", flower_pull
    )
    if wrap is not None:
        wrap(module)
    returned: int | None = module._pull_and_store_message(  # type: ignore[attr-defined]
        state=state,
        object_store=store,
        node_config={},
        receive=lambda: (message, tree),
        get_run=lambda run_id: None,
        get_fab=lambda fab_hash, run_id: None,
        pull_object=pull_object or (lambda run_id, object_id: objects[object_id]),
        confirm_message_received=lambda run_id, message_id: None,
        trusted_entities=None,
    )
    return Pulled(state, store, message, returned)
