//! Typed proxies (see issue "Typed proxies"); not yet implemented.
