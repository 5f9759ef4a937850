"""Where frozen base models come from: the bundled default, Hub ids and local folders
(``loading``), and the Hub client the engine's save/load use (``hub``: resolve, upload, model card).
"""
