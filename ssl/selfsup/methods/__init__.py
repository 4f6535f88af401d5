"""Self-supervised methods. Each is an ``nn.Module`` following :class:`selfsup.methods.base.Method`."""
