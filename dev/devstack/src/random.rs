//! Random strings for passwords, secrets and key ids, read from the kernel (`/dev/urandom`).
//! Owns nothing else.

use std::io::Read;

const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

/// `len` random bytes.
pub fn bytes(len: usize) -> std::io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut buf)?;
    Ok(buf)
}

/// A random alphanumeric string of `len` characters (about 5.95 bits each).
pub fn alphanumeric(len: usize) -> std::io::Result<String> {
    let mut out = String::with_capacity(len);
    while out.len() < len {
        for b in bytes(len)? {
            // 248 = 4 * 62: reject the tail so every character is equally likely.
            if b < 248 && out.len() < len {
                out.push(ALPHABET[usize::from(b) % ALPHABET.len()] as char);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn alphanumeric_has_the_length_and_alphabet_asked_for_and_differs() {
        let a = super::alphanumeric(40).unwrap();
        let b = super::alphanumeric(40).unwrap();
        assert_eq!(a.len(), 40);
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(a, b);
    }
}
