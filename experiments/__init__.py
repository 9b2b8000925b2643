"""Experiments: participants made slow, lagging, dropping out or malicious, for research.

None of this is in the production participant (which imports nothing from here): each is a
wrapper around an app (:class:`~fedq.experiments.wrapper.AppWrapper`) that uses the hooks
a real device has too (``accepts``, an ``async def train``, ``transform_delta``; see
:mod:`fedq.participant.app`). :class:`~fedq.experiments.settings.Emulation` says what to
emulate for one participant and wraps its app; ``fedq simulate`` (its ``--scenario``,
``--slow``, ``--delay``, ``--dropout`` and ``--malicious``), scenarios (:mod:`fedq.scenario`)
and ``fedq participant``'s ``--slowdown``, ``--delay``, ``--dropout`` and ``--attack`` all
come through it.
"""
