-- deepmox 0002: encode speeds learned per kind and rendition, shared by every
-- node: media seconds encoded per wall-clock second.
CREATE TABLE IF NOT EXISTS encode_speeds (
    kind       TEXT NOT NULL,
    rendition  TEXT NOT NULL,
    speed      REAL NOT NULL,
    samples    INTEGER NOT NULL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (kind, rendition)
);
