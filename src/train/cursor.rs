//! Where the next micro-batch comes from: (epoch, index into that epoch's plan).

use crate::data::batch::Batcher;

pub struct Cursor {
    pub epoch: u64,
    pub index: usize,
    plan: Vec<Vec<usize>>,
}

impl Cursor {
    pub fn new(batcher: &Batcher, epoch: u64, index: usize) -> Self {
        Self {
            epoch,
            index,
            plan: batcher.epoch_plan(epoch),
        }
    }

    /// The next micro-batch's window indices, or `None` once `max_epochs` (0 = no limit) passes.
    pub fn next(&mut self, batcher: &Batcher, max_epochs: u64) -> Option<Vec<usize>> {
        if self.index >= self.plan.len() {
            self.epoch += 1;
            self.index = 0;
            self.plan = batcher.epoch_plan(self.epoch);
        }
        if max_epochs > 0 && self.epoch >= max_epochs {
            return None;
        }
        self.index += 1;
        self.plan.get(self.index - 1).cloned()
    }

    /// True when `next` would return `None`: the last allowed epoch is used up.
    pub fn exhausted(&self, max_epochs: u64) -> bool {
        max_epochs > 0
            && (self.epoch >= max_epochs
                || (self.index >= self.plan.len() && self.epoch + 1 >= max_epochs))
    }
}
