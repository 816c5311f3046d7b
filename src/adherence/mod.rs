//! What text and edits do to a face, measured: pixel judges of a few
//! attributes ([`judges`]), a caption grammar for them ([`captions`]), the
//! toy CLIP trained on such captions ([`toy`]), and the adherence of
//! prompts and edits ([`measure`]).
//!
//! Why a toy: real CLIP weights cannot be downloaded on these machines, and
//! a random CLIP's text means nothing. A CLIP trained here on generated
//! faces whose captions come from the judges has a real text-image
//! alignment and a real modality gap for those attributes, so the mapper's
//! defaults (its gap treatment, its bank size) can be chosen on what text
//! does, with judges that no CLIP can fool.

pub mod captions;
pub mod judges;
pub mod measure;
pub mod toy;

pub use judges::{judge, Attribute, AttributeStats, Bin, Judged};
