//! The bot's words for what the generator makes (`generator.subject`):
//! "face" by default, "cat" or "car" for other generators. The command
//! descriptions, their examples and the replies that name the subject take
//! it from here, so a cat generator's bot never talks of faces.

/// The noun and the phrases built on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Words {
    noun: String,
}

/// The message command's name starts with this ("Edit this face").
pub const EDIT_THIS: &str = "Edit this ";

impl Default for Words {
    fn default() -> Self {
        Self::new(crate::pipeline::instruction::FACE)
    }
}

impl Words {
    pub fn new(noun: &str) -> Self {
        Self {
            noun: noun.trim().to_lowercase(),
        }
    }

    pub fn noun(&self) -> &str {
        &self.noun
    }

    fn is_face(&self) -> bool {
        self.noun == crate::pipeline::instruction::FACE
    }

    /// "faces", "cats", "buses", "butterflies".
    pub fn plural(&self) -> String {
        crate::pipeline::instruction::plural(&self.noun)
    }

    /// "a face", "an owl".
    pub fn one(&self) -> String {
        let an = self.noun.starts_with(['a', 'e', 'i', 'o', 'u']);
        format!("{} {}", if an { "an" } else { "a" }, self.noun)
    }

    /// The message command (32 characters at most: the subject is
    /// limited to 22 by `generator.subject`'s check).
    pub fn edit_this(&self) -> String {
        let mut name = format!("{EDIT_THIS}{}", self.noun);
        name.truncate(32);
        name
    }

    /// A prompt to show as an example.
    pub fn example_prompt(&self) -> String {
        if self.is_face() {
            "a man with a beard".into()
        } else {
            format!("a black {} in the snow", self.noun)
        }
    }

    /// Edit instructions to show as examples, quoted.
    pub fn example_edits(&self) -> &'static str {
        if self.is_face() {
            "\"add smile\", \"make older\", \"remove beard\""
        } else {
            "\"make it brighter\", \"warmer background\", \"more colourful\""
        }
    }

    /// One edit instruction, for "e.g. `/edit ...`".
    pub fn example_edit(&self) -> &'static str {
        if self.is_face() {
            "add smile"
        } else {
            "make it brighter"
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_follow_the_subject() {
        let face = Words::default();
        assert_eq!(
            (face.plural(), face.one(), face.edit_this()),
            (
                "faces".into(),
                "a face".into(),
                "Edit this face".to_string()
            )
        );
        assert_eq!(face.example_prompt(), "a man with a beard");
        let cat = Words::new("Cat");
        assert_eq!(cat.plural(), "cats");
        assert_eq!(cat.edit_this(), "Edit this cat");
        assert!(!cat.example_prompt().contains("face") && !cat.example_edits().contains("beard"));
        assert_eq!(Words::new("butterfly").plural(), "butterflies");
        assert_eq!(Words::new("donkey").plural(), "donkeys");
        assert_eq!(Words::new("bus").plural(), "buses");
        assert_eq!(Words::new("owl").one(), "an owl");
        assert!(Words::new("very long subject name here").edit_this().len() <= 32);
    }
}
