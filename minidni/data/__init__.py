"""Bytes on disk: data sets (where their bytes come from, their file formats, the loaders), character-level text,
and the files minidni writes itself (atomic writes, JSON lines, checkpoints).

What this package deliberately is not: about networks. It imports only minidni.core; everything that trains reads
its arrays from here.
"""
