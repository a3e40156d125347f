"""What both kinds share: the apiserver client, the cache mechanism, conditions, timestamps."""
