//! Button, LED and relay on GPIO lines through the Linux GPIO character device (gpiocdev).
//! STUB: being written.
