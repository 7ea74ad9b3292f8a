"""The command layer: each ImageJ command's parameters, declared once, and its computation on plain data.

One module per command family (:mod:`.segment`, :mod:`.track`, :mod:`.classify`, :mod:`.pixels`,
:mod:`.restore`, :mod:`.normalize`, :mod:`.bioimageio`; macro functions about ijtorch in
:mod:`.info`). The menu command and macro keys (``ijtorch.bridge``), the CLI verbs
(``ijtorch.cli``) and the server's request bodies (``ijtorch.serve``) are generated from these
parameter models and call these computations. Nothing here touches the JVM.
"""
