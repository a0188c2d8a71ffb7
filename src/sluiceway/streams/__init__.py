"""The life of one generation, independent of HTTP: run, log, fan out, resume, cancel."""
