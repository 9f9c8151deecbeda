"""feedstream: an event-stream feedback pipeline on Kafka (ingest, stream stages, train triggers).

Services that speak Kafka publish with :class:`FeedbackPublisher` (see ``pipeline.api.publisher``).
"""

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["FeedbackPublisher", "PublishRejected", "PublishResult"]

if TYPE_CHECKING:
    from pipeline.api.publisher import FeedbackPublisher, PublishRejected, PublishResult


def __getattr__(name: str) -> Any:
    """Lazy export, so ``import pipeline.settings`` stays light."""
    if name in __all__:
        from pipeline.api import publisher

        return getattr(publisher, name)
    raise AttributeError(name)
