pub mod lvm;
