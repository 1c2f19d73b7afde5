"""Access control and accountability: API tokens with roles (:mod:`.tokens`) and a hash-chained audit log
(:mod:`.audit`)."""
